"""Schema migration: to head from nothing or an older revision, and nothing imported at head."""

from __future__ import annotations

import subprocess
import sys

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from ltrr_server.log import db


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(db._MIGRATIONS))
    return cfg


def test_the_head_read_from_the_scripts_is_alembics() -> None:
    assert db.head_revision() == ScriptDirectory.from_config(_config()).get_current_head()


def test_a_database_at_an_older_revision_is_brought_to_head(db_url: str) -> None:
    engine = db.create_engine(db_url)
    assert db.current_revision(engine) is None
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    assert db.current_revision(engine) == "0002"
    db.migrate(engine)
    assert db.current_revision(engine) == db.head_revision()


def test_a_restart_at_head_does_not_import_alembic(sqlite_url: str) -> None:
    db.migrate(db.create_engine(sqlite_url))
    script = (f"import sys; from ltrr_server.log import db; db.migrate(db.create_engine({sqlite_url!r})); "
              "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
