"""The live model of every name, as the serving paths read them; a promotion swaps one in."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ltrr_server.errors import FailedPrecondition, NotFound
from ltrr_server.xmr.model import XmrModel
from ltrr_server.xmr.registry import ModelRegistry, load_model

log = logging.getLogger(__name__)


class LiveModels:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._models: dict[str, tuple[int, Any]] = {}
        # Live versions that could not be loaded (their folder missing or unreadable): why, by name.
        self.failed: dict[str, str] = {}

    def load_all(self) -> None:
        """Loads every live version; one that fails to load is logged, left out and kept in ``failed``
        with the reason, which its callers are told."""
        for row in self.registry.live_versions():
            try:
                self._models[row["name"]] = (row["version"], load_model(row["kind"], Path(row["path"])))
            except FailedPrecondition as exc:
                why = f"model {row['name']!r} v{row['version']} is live but cannot be served: {exc.message}"
                self.failed[row["name"]] = why
                log.error("%s", why)

    def get(self, name: str, kind: type[Any] = XmrModel) -> tuple[int, Any]:
        """The live (version, model) of a name; the model must be of class ``kind``."""
        found = self._get(name)
        if not isinstance(found[1], kind):
            raise FailedPrecondition(f"model {name!r} is not a {kind.__name__}", field="model")
        return found

    def _get(self, name: str) -> tuple[int, Any]:
        found = self._models.get(name)
        if found is None:
            if name in self.failed:
                raise FailedPrecondition(self.failed[name], field="model")
            if not any(r["name"] == name for r in self.registry.versions(name)):
                raise NotFound(f"model {name!r} not found", field="model")
            raise FailedPrecondition(f"model {name!r} has no live version: promote one", field="model")
        return found

    def maybe(self, name: str, kind: type[Any] = XmrModel) -> Any:
        """The live model of a name if it is of class ``kind`` (``object``: any), else None."""
        found = self._models.get(name)
        return found[1] if found and isinstance(found[1], kind) else None

    def swap(self, name: str, version: int, model: Any) -> None:
        # One dict assignment: requests that already hold the old model finish with it.
        self._models[name] = (version, model)
        self.failed.pop(name, None)
