"""Reads of the event log: policies, snapshots, replay and recovery, reward look-ups."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from ltrr_server.config import VW_POWER_T, PolicySpec
from ltrr_server.log import schema as t


class EventLogStore:
    """Synchronous queries; the server runs them at start-up or off the event loop."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._action_sets: dict[str, str] = {}

    def resolve_actions(self, conn: sa.Connection, row: dict[str, Any]) -> dict[str, Any]:
        """A decision row with its shared action set ("#key") replaced by the list itself."""
        text = row["actions"]
        if isinstance(text, str) and text.startswith("#"):
            key = text[1:]
            found = self._action_sets.get(key)
            if found is None:
                found = conn.execute(sa.select(t.action_sets.c.actions).where(t.action_sets.c.key == key)).scalar()
                if found is None:
                    raise LookupError(f"action set {key} of event {row.get('event_id')} is missing")
                self._action_sets[key] = found
            row["actions"] = found
        return row

    # --- policies ---------------------------------------------------------------------
    def load_policies(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.policies).order_by(t.policies.c.name)).mappings().all()
        return [dict(r) | {"spec": _stored_spec(json.loads(r["spec"])),
                           "config_spec": json.loads(r["config_spec"]) if r["config_spec"] else None}
                for r in rows]

    def insert_policy(self, spec: PolicySpec, revision: int, lineage: int, lineage_start_seq: int, now: float,
                      config_fields: dict[str, Any] | None = None) -> None:
        """A new policy; ``config_fields``: what the config file sets of it, when it declares it."""
        with self.engine.begin() as conn:
            conn.execute(t.policies.insert().values(
                name=spec.name, spec=json.dumps(spec.to_dict()), revision=revision, lineage=lineage,
                lineage_start_seq=lineage_start_seq, created_at=now, updated_at=now,
                config_spec=None if config_fields is None else json.dumps(config_fields),
            ))

    def note_config_spec(self, name: str, config_fields: dict[str, Any]) -> None:
        """Notes what the config file sets of policy ``name`` now."""
        with self.engine.begin() as conn:
            conn.execute(t.policies.update().where(t.policies.c.name == name).values(
                config_spec=json.dumps(config_fields)))

    def update_policy(self, spec: PolicySpec, revision: int, lineage: int, lineage_start_seq: int, now: float,
                      warm_start: bytes | None = None) -> None:
        """A new spec; ``warm_start`` is the new lineage's first model, stored in the same
        transaction as its first snapshot (so a restart starts from it too)."""
        with self.engine.begin() as conn:
            conn.execute(t.policies.update().where(t.policies.c.name == spec.name).values(
                spec=json.dumps(spec.to_dict()), revision=revision, lineage=lineage,
                lineage_start_seq=lineage_start_seq, updated_at=now,
            ))
            if warm_start is not None:
                conn.execute(t.snapshots.insert().values(
                    policy=spec.name, lineage=lineage, model_version=0, last_joined_seq=lineage_start_seq - 1,
                    trigger="warm_start", created_at=now, size_bytes=len(warm_start), model=warm_start))

    # --- snapshots and replay ---------------------------------------------------------------
    def latest_snapshot(self, policy: str, lineage: int) -> dict[str, Any] | None:
        q = (sa.select(t.snapshots).where(t.snapshots.c.policy == policy, t.snapshots.c.lineage == lineage)
             .order_by(t.snapshots.c.id.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    def snapshot_model(self, snapshot_id: int) -> tuple[str, bytes] | None:
        """The policy and model bytes of one snapshot, or None when there is no such snapshot."""
        q = sa.select(t.snapshots.c.policy, t.snapshots.c.model).where(t.snapshots.c.id == snapshot_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return (str(row[0]), bytes(row[1])) if row else None

    def latest_snapshot_id(self, policy: str) -> int:
        q = sa.select(sa.func.max(t.snapshots.c.id)).where(t.snapshots.c.policy == policy)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def max_joined_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(t.joined.c.seq))).scalar() or 0)

    def joined_after(self, policy: str, seq: int, chunk: int = 5000) -> Iterator[dict[str, Any]]:
        """Joined events of a policy after ``seq``, in order, with their decisions."""
        d, j = t.decisions, t.joined
        q = (sa.select(j.c.seq, j.c.reward, j.c.event_id, d.c.context, d.c.actions, d.c.chosen,
                       d.c.probabilities, d.c.lineage)
             .join(d, d.c.event_id == j.c.event_id)
             .where(j.c.policy == policy, j.c.seq > seq, d.c.learn == sa.true(), j.c.source != "norecord")
             .order_by(j.c.seq))
        with self.engine.connect() as conn, self.engine.connect() as lookup:
            result = conn.execution_options(yield_per=chunk).execute(q).mappings()
            for row in result:
                yield self.resolve_actions(lookup, dict(row))

    def count_joined_after(self, policy: str, seq: int) -> int:
        """How many joined events of a policy follow ``seq`` (the learned and the others)."""
        j = t.joined
        q = sa.select(sa.func.count()).select_from(j).where(j.c.policy == policy, j.c.seq > seq)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def unjoined_decisions(self, policy: str, since: float) -> list[dict[str, Any]]:
        """Decisions made since ``since`` whose join has not been written, oldest first."""
        d, j = t.decisions, t.joined
        q = (sa.select(d).outerjoin(j, j.c.event_id == d.c.event_id)
             .where(d.c.policy == policy, d.c.created_at >= since, j.c.event_id.is_(None))
             .order_by(d.c.created_at))
        with self.engine.connect() as conn:
            return [self.resolve_actions(conn, dict(r)) for r in conn.execute(q).mappings()]

    def rewards_for(self, event_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(event_ids), 500):
                q = (sa.select(t.rewards).where(t.rewards.c.event_id.in_(event_ids[i:i + 500]))
                     .order_by(t.rewards.c.id))
                for r in conn.execute(q).mappings():
                    out.setdefault(r["event_id"], []).append(dict(r))
        return out

    # --- reward classification for events no longer in memory ----------------------------
    def lookup_events(
        self, keys: Sequence[tuple[str, str]]
    ) -> tuple[dict[str, tuple[str, float]], set[tuple[str, str]]]:
        """For (event_id, reward_id) pairs: {event_id: (policy, deadline)} of known decisions,
        and the pairs already stored."""
        event_ids = sorted({e for e, _ in keys})
        decisions: dict[str, tuple[str, float]] = {}
        stored: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(event_ids), 500):
                part = event_ids[i:i + 500]
                for e, p, dl in conn.execute(sa.select(t.decisions.c.event_id, t.decisions.c.policy,
                                                       t.decisions.c.deadline)
                                             .where(t.decisions.c.event_id.in_(part))):
                    decisions[e] = (p, dl)
                for e, r in conn.execute(sa.select(t.rewards.c.event_id, t.rewards.c.reward_id)
                                         .where(t.rewards.c.event_id.in_(part))):
                    stored.add((e, r))
        return decisions, stored


def _stored_spec(data: dict[str, Any]) -> PolicySpec:
    """A stored spec; one stored before ``power_t`` existed learned with VW's own decay, one stored
    before ``cb_type`` existed with VW's importance weights."""
    return PolicySpec.from_dict({"power_t": VW_POWER_T, "cb_type": "mtr"} | data)
