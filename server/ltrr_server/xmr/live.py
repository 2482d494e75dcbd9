"""The live model of every name, as the serving paths read them; a promotion swaps one in."""

from __future__ import annotations

import logging
from pathlib import Path

from ltrr_server.errors import FailedPrecondition, NotFound
from ltrr_server.xmr.model import XmrModel
from ltrr_server.xmr.registry import ModelRegistry

log = logging.getLogger(__name__)


class LiveModels:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._models: dict[str, tuple[int, XmrModel]] = {}

    def load_all(self) -> None:
        """Loads every live version; one that fails to load is logged and left out."""
        for row in self.registry.live_versions():
            try:
                self._models[row["name"]] = (row["version"], XmrModel.load(Path(row["path"])))
            except FailedPrecondition as exc:
                log.error("model %s v%d not served: %s", row["name"], row["version"], exc)

    def get(self, name: str) -> tuple[int, XmrModel]:
        found = self._models.get(name)
        if found is None:
            if not any(r["name"] == name for r in self.registry.versions(name)):
                raise NotFound(f"model {name!r} not found", field="model")
            raise FailedPrecondition(f"model {name!r} has no live version: promote one", field="model")
        return found

    def maybe(self, name: str) -> XmrModel | None:
        found = self._models.get(name)
        return found[1] if found else None

    def swap(self, name: str, version: int, model: XmrModel) -> None:
        # One dict assignment: requests that already hold the old model finish with it.
        self._models[name] = (version, model)
