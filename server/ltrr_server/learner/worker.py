"""The learner process: learns joined events per policy, publishes copies, snapshots on schedule.

Runs ``run`` as a spawned child of the server; talks to ``Learner`` over one pipe.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ltrr_server.learner.messages import (
    LearnEvents,
    ModelRejected,
    Published,
    Restored,
    SetState,
    SnapshotTaken,
    Stop,
    Stopped,
    TakeSnapshot,
    ToLearner,
)
from ltrr_server.learner.state import LearnerState
from ltrr_server.logs import DEFAULT_LOGS, LogSetup
from ltrr_server.policy.model import PolicyModel

if TYPE_CHECKING:  # imported by the process that restores from the log only: it needs SQL, a first one does not
    from ltrr_server.learner.restore import LearnerPolicy


@dataclass(frozen=True)
class RestoreFromLog:
    """What a learner process rebuilds by itself (a replacement: every policy; a first one: those
    whose start-up replay ran out of time): each policy from its latest snapshot and the joined
    events after it, up to ``until_seq``; ``consumed`` counts, per policy, the events handed to the
    processes before it (its backlog is measured from there)."""

    db_url: str
    policies: list[LearnerPolicy]
    until_seq: int
    consumed: dict[str, int]


@dataclass(frozen=True)
class WorkerStart:
    states: list[SetState] = field(default_factory=list)
    restore: RestoreFromLog | None = None


def run(conn: Connection, start: WorkerStart, publish_interval: float, snapshot_interval: float,
        nice: int = 0, logs: LogSetup = DEFAULT_LOGS, leave: Any = None) -> None:
    """The learner process. ``leave`` (a multiprocessing Event) is set by a stop: the events still
    to learn, in the batch at hand and those queued behind it, are left to the next start."""
    logs.apply()
    # Ctrl-C and SIGTERM reach the whole process group; the server decides when the learner stops
    # (after its final snapshots), and a server that dies closes the pipe, which ends this loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    learner = _Worker(conn, publish_interval, snapshot_interval, leave)
    for s in start.states:
        learner.states[s.policy] = _state_of(s)
        learner.consumed[s.policy] = s.learned
    if start.restore is not None:
        _restore(learner, start.restore)
        conn.send(Restored())
    learner.loop()


def _state_of(s: SetState) -> LearnerState:
    model = PolicyModel.from_bytes(s.model, s.frame)
    return LearnerState(s.policy, s.lineage, model, s.last_seq, s.version, s.learned, unsnapshotted=s.unsnapshotted,
                        last_snapshot_at=time.time(), last_good=s.model if model.finite() else None)


def _restore(learner: _Worker, plan: RestoreFromLog) -> None:
    """Rebuilds the plan's policies from the log, then publishes each (a decision path that kept
    serving the dead process's last model, or a start's partial replay, gets the rebuilt one) and
    snapshots it."""
    from ltrr_server.learner.restore import restore_state
    from ltrr_server.log import db
    from ltrr_server.log.store import EventLogStore

    engine = db.create_engine(plan.db_url)
    try:
        store = EventLogStore(engine)
        for policy in plan.policies:
            name = policy.spec.name
            state = restore_state(store, policy, until_seq=plan.until_seq).state
            state.learned = plan.consumed.get(name, 0)
            learner.states[name] = state
            learner.consumed[name] = state.learned
            learner.publish(state)
            if state.unsnapshotted:
                # A stop before the next scheduled snapshot would leave the whole replay to the next start again.
                learner.snapshot(name, "restore", 0)
    finally:
        engine.dispose()


class _Worker:
    def __init__(self, conn: Connection, publish_interval: float, snapshot_interval: float,
                 leave: Any = None) -> None:
        self.conn = conn
        self.leave = leave
        self.publish_interval = publish_interval
        self.snapshot_interval = snapshot_interval
        self.states: dict[str, LearnerState] = {}
        # Joined events taken per policy, learned or skipped (an earlier lineage's): the server
        # compares it with what it handed over to know the backlog. Never reset by a new lineage.
        self.consumed: dict[str, int] = {}

    def loop(self) -> None:
        next_tick = time.monotonic() + self.publish_interval
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                ready = self.conn.poll(timeout)
                # Drain what is queued before publishing: one publish per burst.
                while ready:
                    if self.handle(self.conn.recv()):
                        return
                    ready = time.monotonic() < next_tick and self.conn.poll(0)
            except EOFError:
                return  # the server is gone: nothing left to report to
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + self.publish_interval

    def handle(self, msg: ToLearner) -> bool:
        """Acts on one message from the server; True once told to stop."""
        if isinstance(msg, LearnEvents):
            for i, (seq, policy, lineage, shared, actions, chosen, reward, joined_at) in enumerate(msg.events):
                # A stop: the rest are in the log, after the shutdown snapshot of what was learned.
                # A batch can hold thousands (an import's), of 20 ms each when contexts are wide;
                # every 8th event is asked (about 1 us each).
                if i % 8 == 0 and self.leave is not None and self.leave.is_set():
                    break
                self.consumed[policy] = self.consumed.get(policy, 0) + 1
                state = self.states.get(policy)
                if state is None or state.lineage != lineage:
                    continue  # an earlier lineage's decision: consumed, not learned by the new model
                if not state.unpublished:
                    state.oldest_unpublished_join = joined_at
                state.learn(seq, shared, actions, chosen, reward)
                state.unpublished += 1
                state.unsnapshotted += 1
        elif isinstance(msg, SetState):
            state = self.states[msg.policy] = _state_of(msg)
            self.publish(state)
        elif isinstance(msg, TakeSnapshot):
            self.snapshot(msg.policy, msg.trigger, msg.request_id)
        elif isinstance(msg, Stop):
            for state in self.states.values():
                if state.unpublished:
                    self.publish(state)
                if state.unsnapshotted:
                    self.snapshot(state.policy, "shutdown", 0)
            self.conn.send(Stopped())
            return True
        return False

    def publish(self, state: LearnerState) -> None:
        if not self.finite(state):
            return
        state.version += 1
        lag = time.time() - state.oldest_unpublished_join if state.unpublished else 0.0
        model = state.last_good = state.model.to_bytes()
        self.conn.send(Published(state.policy, state.lineage, model, state.version, lag,
                                 learned=self.consumed.get(state.policy, 0)))
        state.unpublished = 0

    def finite(self, state: LearnerState) -> bool:
        """Whether the policy's model can be published or snapshotted as it is; if not, it went
        back to the last model known finite (``LearnerState.keep_finite``) and the server is told."""
        if state.keep_finite():
            return True
        self.conn.send(ModelRejected(state.policy, state.lineage, state.version, state.unpublished,
                                     rolled_back=state.last_good is not None))
        state.unpublished = 0
        return False

    def snapshot(self, policy: str, trigger: str, request_id: int) -> None:
        state = self.states.get(policy)
        if state is None:
            self.conn.send(SnapshotTaken(request_id, policy, trigger, lineage=0, model=b"", version=0, last_seq=0,
                                         error=f"policy {policy!r} not found"))
            return
        if not self.finite(state) and state.last_good is None:
            self.conn.send(SnapshotTaken(request_id, policy, trigger, lineage=0, model=b"", version=0, last_seq=0,
                                         error=f"policy {policy!r} has no finite model to snapshot"))
            return
        self.conn.send(SnapshotTaken(request_id, policy, trigger, state.lineage, state.model.to_bytes(), state.version,
                                     state.last_seq))
        state.unsnapshotted = 0
        state.last_snapshot_at = time.time()

    def tick(self) -> None:
        now = time.time()
        for state in self.states.values():
            if state.unpublished:
                self.publish(state)
            if state.unsnapshotted and now - state.last_snapshot_at >= self.snapshot_interval:
                self.snapshot(state.policy, "schedule", 0)
