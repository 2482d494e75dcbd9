"""The audit trail: every admin change, with who made it, when, and the thing before and after.

Recorded after the change succeeded (a refused change changed nothing), in SQL beside the event
log, and listed by ``ltrr audit`` and ``AdminService.ListAudit``. Actions:
``policy.create``, ``policy.update`` (``policy.reset`` when the update started a new lineage),
``policy.tune`` (a tuning that switched the policy), ``model.promote`` (``model.force_promote``),
``key.create``, ``key.revoke``. A key's secret never reaches the trail: ``KeyInfo`` has none.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ltrr_server.bounds import MAX_AUDIT_ENTRIES
from ltrr_server.keys import Identity
from ltrr_server.log import schema

ACTIONS = ("policy.create", "policy.update", "policy.reset", "policy.tune", "model.promote",
           "model.force_promote", "key.create", "key.revoke")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    tenant: str
    action: str
    target: str
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


class AuditLog:
    """Appends and lists audit entries. Synchronous: the server calls it off the event loop."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record(self, who: Identity, action: str, target: str, before: Any = None, after: Any = None) -> None:
        assert action in ACTIONS, action
        with self.engine.begin() as conn:
            conn.execute(schema.audit.insert().values(
                at=time.time(), actor=who.actor[:128], tenant=who.tenant, action=action, target=target[:256],
                before_json=_json(before), after_json=_json(after)))

    def list(self, tenant: str | None = None, since: float = 0.0, limit: int = 1000) -> list[AuditEntry]:
        """The newest ``limit`` entries at or after ``since``, oldest first (of ``tenant``, if given)."""
        t = schema.audit
        q = sa.select(t).where(t.c.at >= since).order_by(t.c.id.desc()).limit(max(1, min(limit, MAX_AUDIT_ENTRIES)))
        if tenant is not None:
            q = q.where(t.c.tenant == tenant)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q).mappings())
        return [AuditEntry(r["id"], r["at"], r["actor"], r["tenant"], r["action"], r["target"],
                           json.loads(r["before_json"]) if r["before_json"] else None,
                           json.loads(r["after_json"]) if r["after_json"] else None) for r in reversed(rows)]
