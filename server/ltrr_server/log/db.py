"""Engine creation (SQLite in WAL mode, or PostgreSQL) and schema migration to head."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa

_MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str) -> sa.Engine:
    """An engine for the event log. SQLite gets WAL with full sync: a commit survives power loss."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def migrate(engine: sa.Engine) -> None:
    """Brings the schema to the newest Alembic revision."""
    if current_revision(engine) == head_revision():
        # Nothing to do, as on every restart: Alembic is not even imported (9 MB of RSS, 0.3 s).
        return
    # Imported here: the writer process opens engines too, and never migrates.
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


_REVISION = re.compile(r"^(down_revision|revision)\s*=\s*['\"]?([\w-]+|None)['\"]?", re.MULTILINE)


def head_revision() -> str:
    """The newest revision of the migration scripts, read from their text (no Alembic import).

    >>> head_revision() >= "0003"
    True
    """
    revisions: set[str] = set()
    parents: set[str | None] = set()
    for script in (_MIGRATIONS / "versions").glob("*.py"):
        fields: dict[str, str] = dict(_REVISION.findall(script.read_text(encoding="utf-8")))
        revisions.add(fields["revision"])
        parents.add(fields.get("down_revision"))
    heads = revisions - parents
    assert len(heads) == 1, f"the migrations must have one head, found {sorted(heads)}"
    return heads.pop()
