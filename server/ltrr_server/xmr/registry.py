"""The model registry: versions by name in SQL (``models``), files under the model directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ltrr_server.errors import FailedPrecondition, InvalidArgument, NotFound
from ltrr_server.log import schema as t
from ltrr_server.log.db import claim_folder, database_id
from ltrr_server.xmr.model import XmrModel

_KINDS = ("xmr", "autocomplete", "ranker")


def load_model(kind: str, folder: Path) -> Any:
    """A model folder loaded as its kind; FailedPrecondition names what is wrong with it."""
    if kind == "autocomplete":
        from ltrr_server.autocomplete.model import AutocompleteModel

        return AutocompleteModel.load(folder)
    if kind == "ranker":
        from ltrr_server.ranking.lambdamart import LambdaMartRanker

        return LambdaMartRanker.load(folder)
    return XmrModel.load(folder)


def check_loads(kind: str, folder: Path) -> None:
    """Loads a model folder in a child process; FailedPrecondition says why it does not load.

    A child, because PECOS aborts the whole process on some corrupt files (a truncated
    memory-mapped store throws a C++ exception nothing catches): a bad folder must not take the
    server or the CLI down with it.
    """
    code = ("import sys; from pathlib import Path; from ltrr_server.xmr.registry import load_model; "
            "load_model(sys.argv[1], Path(sys.argv[2]))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, kind, str(folder)], capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise FailedPrecondition(f"model folder {folder}: cannot load: no answer in 900 s", field="path") from exc
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise FailedPrecondition(f"model folder {folder}: cannot load: {why}", field="path")


class ModelRegistry:
    """Versions of models by name. Their folders are ``model_dir/db-<database id>/<name>/v<version>``:
    the database's identity in the path, so two databases sharing a model directory never write
    each other's folders (versions are numbered per database)."""

    def __init__(self, engine: sa.Engine, model_dir: str | Path) -> None:
        self.engine = engine
        self.model_dir = Path(model_dir)
        self._own_dir: Path | None = None

    def own_dir(self) -> Path:
        """This database's folder under ``model_dir`` (made, with its identity, on first use)."""
        if self._own_dir is None:
            db_id = database_id(self.engine)
            folder = self.model_dir / f"db-{db_id[:12]}"
            claim_folder(folder, db_id, "server.model_dir")
            self._own_dir = folder
        return self._own_dir

    def register(self, name: str, kind: str, source: Any, metrics: dict[str, Any]) -> int:
        """Stores a new version (a trained model, or a folder to copy after checking it loads)."""
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
            raise InvalidArgument("name", f"model names are letters, digits, - _ . (1-64), got {name!r}")
        if kind not in _KINDS:
            raise InvalidArgument("kind", f"must be one of {_KINDS}, got {kind!r}")
        if isinstance(source, Path):
            check_loads(kind, source)  # refuses a corrupt or incomplete folder before anything is stored
        with self.engine.begin() as conn:
            version = int(conn.execute(sa.select(sa.func.max(t.models.c.version))
                                       .where(t.models.c.name == name)).scalar() or 0) + 1
            folder = self.own_dir() / name / f"v{version}"
            folder.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                if folder.exists():
                    shutil.rmtree(folder)
                shutil.copytree(source, folder)
            else:
                source.save(folder)
            conn.execute(t.models.insert().values(
                name=name, version=version, kind=kind, path=str(folder), metrics=json.dumps(metrics), live=False,
                created_at=time.time(), promoted_at=None,
            ))
        return version

    def versions(self, name: str = "") -> list[dict[str, Any]]:
        q = sa.select(t.models).order_by(t.models.c.name, t.models.c.version)
        if name:
            q = q.where(t.models.c.name == name)
        with self.engine.connect() as conn:
            return [dict(r) | {"metrics": json.loads(r["metrics"])} for r in conn.execute(q).mappings()]

    def get(self, name: str, version: int = 0) -> dict[str, Any]:
        """A version (0: the live one). NotFound names what is missing."""
        rows = self.versions(name)
        if not rows:
            raise NotFound(f"model {name!r} not found", field="model")
        if version == 0:
            live = [r for r in rows if r["live"]]
            if not live:
                raise FailedPrecondition(f"model {name!r} has no live version: promote one", field="model")
            return live[0]
        found = [r for r in rows if r["version"] == version]
        if not found:
            raise NotFound(f"version: model {name!r} has no version {version}", field="version")
        return found[0]

    def live_versions(self) -> list[dict[str, Any]]:
        return [r for r in self.versions() if r["live"]]

    def set_live(self, name: str, version: int, promotion: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(t.models.update().where(t.models.c.name == name).values(live=False))
            row = conn.execute(sa.select(t.models.c.metrics).where(t.models.c.name == name,
                                                                   t.models.c.version == version)).scalar()
            metrics = json.loads(row or "{}") | {"promotion": promotion}
            conn.execute(t.models.update().where(t.models.c.name == name, t.models.c.version == version)
                         .values(live=True, promoted_at=time.time(), metrics=json.dumps(metrics)))
