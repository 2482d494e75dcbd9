"""Policies: their specs and lineages in SQL, their serving models, their restore, admin changes.

``tests/server/core/test_parts.py`` exercises it on its own, over a real database and learner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ltrr_server.bounds import ID_CHARS
from ltrr_server.config import PolicySpec
from ltrr_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Overloaded
from ltrr_server.learner.learner import Learner, LearnerState, SnapshotInfo
from ltrr_server.learner.restore import RESTORE_SECONDS, LearnerPolicy, restore_state
from ltrr_server.log.store import EventLogStore
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import ModelFrame, PolicyModel
from ltrr_server.policy.runtime import PolicyRuntime
from ltrr_server.regret import RewardWindow
from ltrr_server.tenancy import tenant_of

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PolicyInfo:
    spec: PolicySpec
    revision: int
    lineage: int
    model_version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class PolicyChange:
    """What an update did: the policy now, its spec before, and whether a new lineage started."""

    info: PolicyInfo
    before: PolicySpec
    reset: bool


class PolicyBook:
    """Every policy by name: the decision path reads ``get``; the learner publishes into it."""

    def __init__(
        self, store: EventLogStore, metrics: Metrics, learner: Learner, next_seq: Callable[[], int],
        metrics_window: int, max_policies: int = 100, retrieval_policies: Sequence[str] = (),
    ) -> None:
        self._store = store
        # Their plans are drawn for Retrieve and Search, whose requests carry no baseline.
        self._retrieval_policies = frozenset(retrieval_policies)
        self._max_policies = max_policies
        self._metrics = metrics
        self._learner = learner
        # The position of the next joined event: a new lineage learns from there on.
        self._next_seq = next_seq
        self._metrics_window = metrics_window
        self.policies: dict[str, PolicyRuntime] = {}
        # Held by whatever creates or changes a policy (``update``).
        self._changing = asyncio.Lock()

    def get(self, name: str, field: str = "policy") -> PolicyRuntime:
        """The policy named ``name``; errors name the request's ``field``."""
        rt = self.policies.get(name)
        if rt is None:
            if not name:
                raise InvalidArgument(field, "is empty")
            if len(name) > ID_CHARS:
                raise InvalidArgument(field, f"longer than {ID_CHARS} characters")
            raise NotFound(f"policy {name!r} not found", field=field)
        return rt

    # ------------------------------------------------------------------ restore
    def restore_all(self, configured: Sequence[PolicySpec], config_fields: Mapping[str, Sequence[str]] | None = None,
                    on_change: Callable[[PolicyChange], None] | None = None) -> list[tuple[PolicyRuntime, float]]:
        """Stores configured policies the database does not know, applies to the others what the
        config file changed since it was last read (``from_config``; ``config_fields``: per
        policy, the fields its table sets, default all), then restores every stored one
        (snapshot + replay). Returns each with the time before which its decisions were joined
        before its snapshot (the recovery of unjoined decisions starts there).

        Each change it makes is given to ``on_change`` as soon as it is stored (the audit trail: a
        start that fails at a later policy has audited the earlier)."""
        stored = {row["name"]: row for row in self._store.load_policies()}
        now = time.time()
        for spec in configured:
            declared = config_part(spec, (config_fields or {}).get(spec.name))
            row = stored.get(spec.name)
            if row is None:
                start = self._next_seq()
                self._store.insert_policy(spec, 1, 1, start, now, config_fields=declared)
                stored[spec.name] = dict(spec=spec, revision=1, lineage=1, lineage_start_seq=start,
                                         created_at=now, updated_at=now)
                continue
            held, last = row["spec"], row["config_spec"]
            assert isinstance(held, PolicySpec)
            try:
                spec_now = from_config(held, last, spec, declared)
            except InvalidArgument as exc:
                raise InvalidArgument(f"policies.{spec.name}", f"the config file's changes since it was last read "
                                      f"({', '.join(config_changes(last or {}, declared))}) do not go with the "
                                      f"database's spec: {exc.message}; change them together in the file, or "
                                      f"the stored policy first (ltrr policies update)") from None
            if spec_now != held:
                log.warning("policy %s: the config file changed %s since the server last read it: the database's "
                            "spec takes them", spec.name, ", ".join(changed_fields(held, spec_now)))
                self._restore_update(row, spec_now, now, on_change)
            kept = [name for name in changed_fields(spec_now, spec) if name in declared]
            if kept:
                log.warning("policy %s: %s changed in the database (by an admin or a tuning) since the config file "
                            "last changed them: the config file's are ignored", spec.name, ", ".join(kept))
            if last != declared:
                self._store.note_config_spec(spec.name, declared)
        for row in stored.values():
            held = row["spec"]
            assert isinstance(held, PolicySpec)
            if held.mode == "apprentice" and held.name in self._retrieval_policies:
                # Switched so before UpdatePolicy refused it: it served as online all along.
                log.warning("policy %s: stored as an apprentice, but it draws plans for Retrieve and Search, whose "
                            "requests name no baseline: its mode is set online, as it has served", held.name)
                self._restore_update(row, dataclasses.replace(held, mode="online"), now, on_change)
        deadline = time.monotonic() + RESTORE_SECONDS
        return [self._restore(row, deadline) for row in stored.values()]

    def _restore_update(self, row: dict[str, Any], spec: PolicySpec, now: float,
                        on_change: Callable[[PolicyChange], None] | None) -> None:
        """A change made while restoring, before anything serves: stored, and noted in ``row``."""
        before = row["spec"]
        assert isinstance(before, PolicySpec)
        reset = spec.learning_params() != before.learning_params()
        revision, lineage = int(row["revision"]) + 1, int(row["lineage"]) + reset
        start = self._next_seq() if reset else int(row["lineage_start_seq"])
        self._store.update_policy(spec, revision, lineage, start, now)
        row.update(spec=spec, revision=revision, lineage=lineage, lineage_start_seq=start, updated_at=now)
        if on_change is not None:
            info = PolicyInfo(spec, revision, lineage, 0, float(row["created_at"]), now)
            on_change(PolicyChange(info, before, reset))

    def _restore(self, row: dict[str, object], deadline: float) -> tuple[PolicyRuntime, float]:
        spec = row["spec"]
        assert isinstance(spec, PolicySpec)
        lineage = int(row["lineage"])  # type: ignore[call-overload]
        start_seq = int(row["lineage_start_seq"])  # type: ignore[call-overload]
        t0 = time.perf_counter()
        restored = restore_state(self._store, LearnerPolicy(spec, lineage, start_seq), deadline=deadline)
        state = restored.state
        rt = PolicyRuntime(
            spec=spec, revision=int(row["revision"]), lineage=lineage,  # type: ignore[call-overload]
            lineage_start_seq=start_seq, created_at=float(row["created_at"]),  # type: ignore[arg-type]
            updated_at=float(row["updated_at"]), serving=state.model, model_version=state.version,  # type: ignore[arg-type]
            window=RewardWindow(self._metrics_window),
        )
        self._register(rt)
        left = 0 if restored.complete else self._store.count_joined_after(spec.name, state.last_seq)
        self._learner.set_state(state, replay_left=left)
        log.info("policy %s: lineage %d, snapshot %s, replayed %d joined events in %.2fs", spec.name, lineage,
                 restored.snapshot_id or "none", restored.replayed, time.perf_counter() - t0)
        if left:
            log.warning("policy %s: %d joined events after its snapshot are left past the %.0f s a start replays "
                        "(a stop left the learner behind): it serves the model replayed so far, and the learner "
                        "process replays the rest (ltrr_learner_lag_events), then publishes and snapshots it",
                        spec.name, left, RESTORE_SECONDS)
        return rt, restored.joins_settled_before

    def learner_policies(self) -> list[LearnerPolicy]:
        """What a replacement learner process rebuilds, as the decision path knows the policies now."""
        return [LearnerPolicy(rt.spec, rt.lineage, rt.lineage_start_seq, rt.model_version)
                for rt in list(self.policies.values())]

    def on_publish(self, policy: str, lineage: int, model: PolicyModel, version: int, lag: float) -> None:
        """Called on the thread that receives from the learner process: one attribute swap, atomic
        for the event loop, which reads `rt.serving` once per decision."""
        rt = self.policies.get(policy)
        if rt is None or rt.lineage != lineage:
            return
        rt.serving = model
        rt.model_version = max(version, rt.model_version)
        rt.last_lag_seconds = lag
        self._metrics.model_version.labels(policy).set(rt.model_version)
        self._metrics.learner_lag_seconds.labels(policy).set(lag)

    # ------------------------------------------------------------------ admin
    @staticmethod
    def info(rt: PolicyRuntime) -> PolicyInfo:
        return PolicyInfo(rt.spec, rt.revision, rt.lineage, rt.model_version, rt.created_at, rt.updated_at)

    def list_infos(self) -> list[PolicyInfo]:
        return [self.info(rt) for _, rt in sorted(self.policies.items())]

    def get_info(self, name: str, field: str = "name") -> PolicyInfo:
        return self.info(self.get(name, field))

    async def create(self, spec: PolicySpec) -> PolicyInfo:
        return await _finished(self._locked_create(spec))

    async def _locked_create(self, spec: PolicySpec) -> PolicyInfo:
        async with self._changing:
            return await self._create(spec)

    def _check_mode(self, spec: PolicySpec) -> None:
        if spec.mode == "apprentice" and spec.name in self._retrieval_policies:
            raise InvalidArgument("spec.mode", f"policy {spec.name!r} draws plans for Retrieve and Search, whose "
                                               f"requests name no baseline to serve: it cannot be an apprentice")

    async def _create(self, spec: PolicySpec) -> PolicyInfo:
        self._check_mode(spec)
        if spec.name in self.policies:
            raise AlreadyExists(f"spec.name: policy {spec.name!r} exists already", field="spec.name")
        tenant = tenant_of(spec.name)
        held = sum(1 for name in self.policies if tenant_of(name) == tenant)
        if held >= self._max_policies:
            raise Overloaded(f"{held} policies, limits.max_policies: the tenant can create no more", field="spec.name")
        now = time.time()
        start = self._next_seq()
        await asyncio.to_thread(self._store.insert_policy, spec, 1, 1, start, now)
        self._install(spec, revision=1, lineage=1, start_seq=start, created_at=now, now=now)
        return self.get_info(spec.name)

    async def update(self, name: str, change: Callable[[PolicySpec], PolicySpec], warm_start: bytes | None = None,
                     field: str = "spec.name") -> PolicyChange:
        """Policy ``name``'s spec becomes ``change(its spec)``; a change to its learning parameters
        starts a new lineage: a fresh model, or ``warm_start`` (a model of the new parameters, such
        as a tuning replay's).

        One change at a time, each reading the spec the one before wrote: two partial updates at
        once (an admin's and a scheduled tune's) each read the same spec, and the second write
        undid the first; two resets both took the next lineage number, for different specs.
        """
        return await _finished(self._locked_update(name, change, warm_start, field))

    async def _locked_update(self, name: str, change: Callable[[PolicySpec], PolicySpec], warm_start: bytes | None,
                             field: str) -> PolicyChange:
        async with self._changing:
            rt = self.get(name, field)
            before = rt.spec
            spec = change(before)
            if spec.name != name:
                raise InvalidArgument(field, f"a change of policy {name!r} named {spec.name!r}")
            self._check_mode(spec)
            info, reset = await self._update(rt, spec, warm_start)
            return PolicyChange(info, before, reset)

    async def _update(self, rt: PolicyRuntime, spec: PolicySpec, warm_start: bytes | None) -> tuple[PolicyInfo, bool]:
        reset = spec.learning_params() != rt.spec.learning_params()
        now = time.time()
        lineage = rt.lineage + 1 if reset else rt.lineage
        start = self._next_seq() if reset else rt.lineage_start_seq
        warm_start = warm_start if reset else None
        warm = (None if warm_start is None
                else PolicyModel.from_bytes(warm_start, ModelFrame.of(spec)))
        if warm is not None and not warm.finite():
            raise FailedPrecondition(f"the warm start of policy {spec.name!r} has NaN or infinite weights: it would "
                                     f"answer NaN probabilities", field="warm_start")
        await asyncio.to_thread(self._store.update_policy, spec, rt.revision + 1, lineage, start, now, warm_start)
        if reset:
            self._install(spec, revision=rt.revision + 1, lineage=lineage, start_seq=start,
                          created_at=rt.created_at, now=now, model=warm)
        else:
            rt.spec = spec
            rt.revision += 1
            rt.updated_at = now
            rt.set_actions(spec.actions)
        return self.get_info(spec.name), reset

    def _install(self, spec: PolicySpec, revision: int, lineage: int, start_seq: int, created_at: float,
                 now: float, model: PolicyModel | None = None) -> None:
        model = PolicyModel.create(spec) if model is None else model
        old = self.policies.get(spec.name)
        rt = PolicyRuntime(
            spec=spec, revision=revision, lineage=lineage, lineage_start_seq=start_seq, created_at=created_at,
            updated_at=now, serving=model.copy(), model_version=0,
            window=RewardWindow(self._metrics_window),
        )
        if old is not None:  # counters span lineages
            rt.counts = old.counts
        self._register(rt)
        self._learner.set_state(LearnerState(spec.name, lineage, model, start_seq - 1, 0, last_snapshot_at=now))

    def _register(self, rt: PolicyRuntime) -> None:
        name = rt.spec.name
        self._metrics.watch_policy(name, rt.window.stats, rt.counts)
        self._metrics.learner_lag_events.labels(name).set_function(lambda: self._learner.backlog(name))
        self.policies[name] = rt

    async def snapshot(self, name: str) -> SnapshotInfo:
        self.get(name, "name")
        info = await asyncio.wrap_future(self._learner.snapshot(name))
        info.snapshot_id = await asyncio.to_thread(self._store.latest_snapshot_id, name)
        return info

    async def stats(self, name: str) -> dict[str, float]:
        """The policy's own figures: decisions, rewards by outcome, joins, learning, its window."""
        rt = self.get(name, "name")
        last_snapshot = await asyncio.to_thread(self._store.latest_snapshot_id, name)
        w = rt.window.stats()
        return {
            "decisions": rt.counts.get("decisions", 0),
            "rewards_accepted": rt.counts.get("rewards_accepted", 0),
            "rewards_duplicate": rt.counts.get("rewards_duplicate", 0),
            "rewards_late": rt.counts.get("rewards_late", 0),
            "joined": rt.counts.get("joined", 0),
            "joined_default": rt.counts.get("joined_default", 0),
            "learned": self._learner.learned.get(name, 0),
            "model_version": rt.model_version,
            "mean_reward": w["mean_reward"],
            "estimated_regret": w["estimated_regret"],
            "true_regret_total": rt.true_regret_total,
            "exploration_share": w["exploration_share"],
            "greedy_share": w["greedy_share"],
            "greedy_mean_reward": w["greedy_mean_reward"],
            "learner_lag_seconds": rt.last_lag_seconds,
            "learner_lag_events": self._learner.backlog(name),
            "last_snapshot_id": last_snapshot,
        }


async def _finished(work: Coroutine[Any, Any, T]) -> T:
    """``work``, carried to its end even when its caller leaves (a deadline, a cancelled call).

    A policy change writes the database, then the serving state: cancelled between the two (an
    UpdatePolicy whose deadline passed while SQLite was busy), the database held the new spec and
    lineage and the server went on serving the old one, until a restart switched it. The caller
    still gets its cancellation; the change is whole either way.
    """
    task = asyncio.ensure_future(work)
    # Its outcome once nobody waits for it: retrieved here, or asyncio reports it as lost.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return await asyncio.shield(task)


def changed_fields(a: PolicySpec, b: PolicySpec) -> list[str]:
    """The names of the fields in which two specs differ.

    >>> changed_fields(PolicySpec("p"), PolicySpec("p", learning_rate=0.1, mode="apprentice"))
    ['learning_rate', 'mode']
    """
    return [f.name for f in dataclasses.fields(PolicySpec) if getattr(a, f.name) != getattr(b, f.name)]


def config_part(spec: PolicySpec, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The fields of ``spec`` its config table sets (None: all), as stored (JSON values).

    >>> config_part(PolicySpec("p", interactions=("uA",)), ["name", "interactions"])
    {'interactions': ['uA'], 'name': 'p'}
    """
    whole = json.loads(json.dumps(spec.to_dict()))
    return {name: whole[name] for name in sorted(whole) if fields is None or name in fields}


def from_config(held: PolicySpec, last: Mapping[str, Any] | None, config: PolicySpec,
                declared: Mapping[str, Any]) -> PolicySpec:
    """The spec a configured policy takes at a start: the database's (``held``), with each field
    the config file changed since it was last read taken from the file. ``last`` and ``declared``
    are what the file set then and sets now (``config_part``): a field it sets now and did not,
    or no longer sets (its default now), is a change too; a field it never set is not, so a
    default changed by a new version of ltrr does not change a policy that learned with the old
    one. An admin's change stays until the file changes that field itself. ``last`` None (a
    policy created over the API, or a database from before 2026-12-01): the database's as it is.

    Until 2026-12-01 the database's spec was kept whole: a field edited in the file and restarted
    was ignored for good.

    >>> held = PolicySpec("p", mode="online", learning_rate=0.5)  # an admin switched it online
    >>> last = {"name": "p", "mode": "apprentice", "learning_rate": 0.5}
    >>> config = PolicySpec("p", mode="apprentice", learning_rate=0.1)
    >>> spec = from_config(held, last, config, config_part(config, ["name", "mode", "learning_rate"]))
    >>> spec.mode, spec.learning_rate
    ('online', 0.1)
    """
    if last is None:
        return held
    taken = {name: getattr(config, name) for name in config_changes(last, declared)}
    return dataclasses.replace(held, **taken) if taken else held


def config_changes(last: Mapping[str, Any], declared: Mapping[str, Any]) -> list[str]:
    """The fields the config file changed between two reads (``config_part``): set anew, set no
    more, or set otherwise.

    >>> config_changes({"name": "p", "epsilon": 0.1}, {"name": "p", "mode": "online"})
    ['epsilon', 'mode']
    """
    known = {f.name for f in dataclasses.fields(PolicySpec)}
    return [name for name in sorted((set(last) | set(declared)) & known)
            if name not in last or name not in declared or last[name] != declared[name]]
