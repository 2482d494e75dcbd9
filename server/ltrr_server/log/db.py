"""Engine creation (SQLite in WAL mode, or PostgreSQL) and schema migration to head."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ltrr_server.errors import FailedPrecondition
from ltrr_server.log.driver import DriverConnect, execute_each

_MIGRATIONS = Path(__file__).parent / "migrations"


# SQLite: a commit survives power loss; a writer waits for a lock instead of failing at once.
_SQLITE_CONNECT_ARGS = {"check_same_thread": False, "timeout": 30}
_SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=30000")
# A server that stops answering is noticed: connecting gives up after 5 s, and TCP keepalives
# and a user timeout end a connection whose peer is gone without closing it.
_PG_CONNECT_ARGS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                    "keepalives_count": 3, "tcp_user_timeout": 30_000}
# The DB-API modules of the dialects above, for ``driver_connect``.
_DRIVERS = {("sqlite", "pysqlite"): "sqlite3", ("postgresql", "psycopg"): "psycopg"}


def create_engine(url: str) -> sa.Engine:
    """An engine for the event log. SQLite gets WAL with full sync: a commit survives power loss."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args=_SQLITE_CONNECT_ARGS)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            execute_each(dbapi_conn, _SQLITE_PRAGMAS)

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=_PG_CONNECT_ARGS)


def driver_connect(engine: sa.Engine) -> DriverConnect | None:
    """How to open ``engine``'s database with its DB-API module alone, with the arguments and
    settings ``create_engine`` gives it; None for a driver other than sqlite3 and psycopg.

    >>> driver_connect(create_engine("sqlite:////tmp/ltrr.db")).args
    ('/tmp/ltrr.db',)
    """
    module = _DRIVERS.get((engine.dialect.name, engine.dialect.driver))
    if module is None or in_memory(engine.url):
        return None
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    if module == "sqlite3":
        return DriverConnect(module, tuple(args), {**kwargs, **_SQLITE_CONNECT_ARGS}, _SQLITE_PRAGMAS)
    # SQLAlchemy's adapters ("context") are for its own types: the log's rows are plain values.
    kwargs = {k: v for k, v in kwargs.items() if k != "context"}
    return DriverConnect(module, tuple(args), {**kwargs, **_PG_CONNECT_ARGS})


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


def in_memory(url: sa.URL) -> bool:
    """Whether the database lives in this process's memory (an in-memory SQLite database)."""
    return url.get_backend_name() == "sqlite" and (url.database in (None, "", ":memory:") or "mode=memory" in str(url))


def journal_folder(setting: str, url: sa.URL, db_id: str) -> Path | None:
    """Where this database's journal lives (``server.journal_dir``), or None without one.

    >>> journal_folder("", sa.make_url("sqlite:////var/lib/ltrr/ltrr.db"), "0123456789abcdef")
    PosixPath('/var/lib/ltrr/ltrr-journal/db-0123456789ab')
    >>> journal_folder("", sa.make_url("postgresql://db/ltrr"), "0123456789abcdef")
    PosixPath('ltrr-journal/db-0123456789ab')
    >>> journal_folder("none", sa.make_url("postgresql://db/ltrr"), "0123456789abcdef") is None
    True
    """
    if setting == "none" or in_memory(url):
        return None
    if setting:
        base = Path(setting)
    elif url.get_backend_name() == "sqlite" and url.database:
        base = Path(url.database).parent / "ltrr-journal"
    else:
        base = Path("ltrr-journal")
    return base / f"db-{db_id[:12]}"


def database_id(engine: sa.Engine) -> str:
    """This database's identity: a random id made once, at its first use (the schema must be migrated).

    Data and model folders carry it, so that two databases never write the same folder.
    """
    from ltrr_server.log.schema import meta

    with engine.begin() as conn:
        found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "database_id")).scalar()
        if found is None:
            # Two servers starting together on a new database: the first insert wins for both.
            conn.execute(sa.text("INSERT INTO ltrr_meta (key, value) VALUES ('database_id', :v) "
                                 "ON CONFLICT DO NOTHING"), {"v": uuid.uuid4().hex})
            found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "database_id")).scalar()
    return str(found)


IDENTITY_FILE = ".ltrr-database"


def claim_folder(folder: Path, db_id: str, setting: str) -> None:
    """Makes ``folder`` this database's, or refuses (FailedPrecondition naming it) when another
    database's identity is written in it. A folder written before folders carried an identity is
    taken as it is (its contents are checked against the database afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / IDENTITY_FILE
    if marker.exists():
        owner = marker.read_text().strip()
        if owner != db_id:
            raise FailedPrecondition(
                f"{setting} = {str(folder)!r} belongs to another database ({owner}; this one is {db_id}): "
                f"give this server a {setting} of its own, or remove the folder to rebuild it", field=setting)
        return
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(db_id + "\n")
    tmp.replace(marker)
