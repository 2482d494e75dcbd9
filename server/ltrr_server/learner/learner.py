"""The learner thread.

Why a thread of its own: the decision path must never wait for learning. VW holds the
GIL inside each call, but one ``learn_one`` is tens of microseconds, so the event loop
is delayed by at most one such call at a time. The learner owns its models outright and
hands the decision path a *copy* (``PolicyModel.from_bytes``) at most every
``publish_interval`` seconds, so no lock is ever shared between learning and deciding.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ltrr_server.errors import NotFound
from ltrr_server.log.joiner import JoinedEvent
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import PolicyModel

log = logging.getLogger(__name__)


@dataclass
class SnapshotInfo:
    snapshot_id: int
    policy: str
    model_version: int
    last_joined_seq: int
    created_at: float
    size_bytes: int


@dataclass
class LearnerState:
    """One policy's learning model and its position in the joined-event log."""

    policy: str
    lineage: int
    model: PolicyModel
    last_seq: int
    version: int
    learned: int = 0
    unpublished: int = 0
    unsnapshotted: int = 0
    oldest_unpublished_join: float = 0.0
    last_snapshot_at: float = 0.0

    def learn(self, ev: JoinedEvent) -> None:
        cost = -ev.reward
        self.model.learn_one(
            ev.shared, ev.actions, [(idx, cost, prob) for idx, prob in ev.chosen], slots=len(ev.chosen)
        )
        self.last_seq = ev.seq
        self.learned += 1


# publish(policy, lineage, serving model, version, lag seconds)
Publish = Callable[[str, int, PolicyModel, int, float], None]


class Learner:
    """Learns joined events in order, per policy; publishes and snapshots on a schedule."""

    def __init__(
        self, writer: EventLogWriter, metrics: Metrics, publish: Publish,
        publish_interval: float, snapshot_interval: float, snapshot_ids: Callable[[str], int],
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._publish = publish
        self._publish_interval = publish_interval
        self._snapshot_interval = snapshot_interval
        self._snapshot_ids = snapshot_ids
        self._states: dict[str, LearnerState] = {}
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ltrr-learner", daemon=True)
        self.learned: dict[str, int] = {}

    # --- called from other threads -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def put(self, event: JoinedEvent) -> None:
        self._queue.put(event)

    def set_state(self, state: LearnerState) -> None:
        """Adds a policy or replaces its lineage (after a reset). Before start: applied at once."""
        if self._thread.is_alive():
            self._queue.put(("state", state))
        else:
            self._states[state.policy] = state

    def drain_before_start(self) -> None:
        """Learns, on the calling thread, what start-up queued (recovered joins)."""
        assert not self._thread.is_alive()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._handle(item)
        for state in self._states.values():
            self._publish_state(state)

    def snapshot(self, policy: str, trigger: str = "admin") -> Future[SnapshotInfo]:
        fut: Future[SnapshotInfo] = Future()
        self._queue.put(("snapshot", policy, trigger, fut))
        return fut

    def stop(self, timeout: float = 60.0) -> None:
        """Learns what is queued, writes a final snapshot of every changed policy, stops."""
        done: Future[None] = Future()
        self._queue.put(("stop", done))
        if self._thread.is_alive():
            done.result(timeout)
            self._thread.join(timeout)

    # --- the learner thread ---------------------------------------------------------
    def _run(self) -> None:
        next_tick = time.monotonic() + self._publish_interval
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None:
                stop = self._handle(item)
                # Drain what is already queued before publishing: one publish per burst.
                while stop is None and time.monotonic() < next_tick:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    stop = self._handle(item)
                if stop is not None:
                    self._finish(stop)
                    return
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + self._publish_interval

    def _handle(self, item: object) -> Future[None] | None:
        if isinstance(item, JoinedEvent):
            state = self._states.get(item.policy)
            if state is None or state.lineage != item.lineage:
                return None  # an earlier lineage's decision: not learned by the new model
            if not state.unpublished:
                state.oldest_unpublished_join = item.joined_at
            state.learn(item)
            state.unpublished += 1
            state.unsnapshotted += 1
            self.learned[item.policy] = self.learned.get(item.policy, 0) + 1
            self._metrics.learned.labels(item.policy).inc()
            return None
        assert isinstance(item, tuple)
        if item[0] == "state":
            state = item[1]
            self._states[state.policy] = state
            self._publish_state(state)
        elif item[0] == "snapshot":
            _, policy, trigger, fut = item
            try:
                fut.set_result(self._snapshot(policy, trigger))
            except Exception as exc:
                fut.set_exception(exc)
        elif item[0] == "stop":
            done: Future[None] = item[1]
            return done
        return None

    def _publish_state(self, state: LearnerState) -> None:
        state.version += 1
        lag = time.time() - state.oldest_unpublished_join if state.unpublished else 0.0
        serving = PolicyModel.from_bytes(state.model.to_bytes(), state.model.kind)
        self._publish(state.policy, state.lineage, serving, state.version, lag)
        state.unpublished = 0

    def _tick(self) -> None:
        now = time.time()
        for state in self._states.values():
            if state.unpublished:
                self._publish_state(state)
            if state.unsnapshotted and now - state.last_snapshot_at >= self._snapshot_interval:
                try:
                    self._snapshot(state.policy, "schedule")
                except Exception as exc:  # the log is down: try again next interval
                    log.warning("scheduled snapshot of %s failed: %s", state.policy, exc)
                    state.last_snapshot_at = now

    def _snapshot(self, policy: str, trigger: str) -> SnapshotInfo:
        state = self._states.get(policy)
        if state is None:
            raise NotFound(f"policy {policy!r} not found")
        data = state.model.to_bytes()
        now = time.time()
        row = dict(
            policy=policy, lineage=state.lineage, model_version=state.version, last_joined_seq=state.last_seq,
            trigger=trigger, created_at=now, size_bytes=len(data), model=data,
        )
        # Joined rows up to last_seq were submitted before this one: the same or an earlier commit.
        self._writer.submit("snapshots", [row], force=True).result(timeout=60)
        state.unsnapshotted = 0
        state.last_snapshot_at = now
        self._metrics.snapshots.labels(policy, trigger).inc()
        return SnapshotInfo(
            snapshot_id=self._snapshot_ids(policy), policy=policy, model_version=state.version,
            last_joined_seq=state.last_seq, created_at=now, size_bytes=len(data),
        )

    def _finish(self, done: Future[None]) -> None:
        for state in self._states.values():
            if state.unpublished:
                self._publish_state(state)
            if state.unsnapshotted:
                try:
                    self._snapshot(state.policy, "shutdown")
                except Exception as exc:
                    log.error("shutdown snapshot of %s failed: %s", state.policy, exc)
        done.set_result(None)
