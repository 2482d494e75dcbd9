"""The learner: a process of its own, fed joined events, publishing model copies and snapshots.

Why a process: VW holds the GIL inside every call. Learning in a thread would take its share
of the one interpreter lock from the decision path and from reward ingest (a learn is ~35 us,
as long as a whole ingest of one reward), so on a busy server learning and serving would slow
each other down. In a child process the learner runs on the other core, and the main process
only pickles batches of joined events to it and takes back a serialized model every
``publish_interval`` seconds, which it loads as a fresh copy for the decision path.

Before ``start`` (restore at start-up) the same ``LearnerState`` learns in the main process:
the snapshot is loaded and the joined events after it replayed before any call is served.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ltrr_server.errors import FailedPrecondition, NotFound
from ltrr_server.learner import worker
from ltrr_server.learner.state import LearnerState
from ltrr_server.log.joiner import JoinedEvent
from ltrr_server.log.rows import SnapshotRow
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import PolicyModel

log = logging.getLogger(__name__)

__all__ = ["Learner", "LearnerState", "SnapshotInfo"]


@dataclass
class SnapshotInfo:
    snapshot_id: int
    policy: str
    model_version: int
    last_joined_seq: int
    created_at: float
    size_bytes: int


# publish(policy, lineage, serving model, version, lag seconds)
Publish = Callable[[str, int, PolicyModel, int, float], None]


class Learner:
    """Front of the learner process, in the server process. Thread-safe."""

    def __init__(
        self, writer: EventLogWriter, metrics: Metrics, publish: Publish,
        publish_interval: float, snapshot_interval: float, snapshot_ids: Callable[[str], int],
        nice: int = 0,
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._publish = publish
        self._publish_interval = publish_interval
        self._snapshot_interval = snapshot_interval
        self._snapshot_ids = snapshot_ids
        self._nice = nice
        self._states: dict[str, LearnerState] = {}
        self._kinds: dict[str, str] = {}
        self._pre_start: list[JoinedEvent] = []
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending_snapshots: dict[int, Future[SnapshotInfo]] = {}
        self._request_ids = itertools.count(1)
        self._stopped = threading.Event()
        self._process: Any = None
        self._conn: Connection | None = None
        self.learned: dict[str, int] = {}
        self.alive = False
        # Nothing for the child to learn or snapshot yet: stop() then need not wait for it.
        self._idle_since_start = True

    # --- before start: restore in this process ------------------------------------------
    def set_state(self, state: LearnerState) -> None:
        """Adds a policy or replaces its lineage (after a reset)."""
        self._kinds[state.policy] = state.model.kind
        if self._process is None:
            self._states[state.policy] = state
        else:
            self._give(("state", state.policy, state.lineage, state.model.kind, state.model.to_bytes(),
                        state.last_seq, state.version))

    def drain_before_start(self) -> None:
        """Learns, in this process, the joins recovered at start-up; then publishes every policy."""
        assert self._process is None
        for state in self._states.values():
            state.learned = 0  # counts what this process learns of its own joins, not the replay
        for ev in self._pre_start:
            target = self._states.get(ev.policy)
            if target is not None and target.lineage == ev.lineage:
                target.learn_event(ev)
                target.unsnapshotted += 1
        self._pre_start.clear()
        for state in self._states.values():
            state.version += 1
            self.learned[state.policy] = state.learned
            self._publish(state.policy, state.lineage, PolicyModel.from_bytes(state.model.to_bytes(),
                          state.model.kind), state.version, 0.0)

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        states = [(s.policy, s.lineage, s.model.kind, s.model.to_bytes(), s.last_seq, s.version, s.learned,
                   s.unsnapshotted) for s in self._states.values()]
        self._idle_since_start = not any(s.unsnapshotted for s in self._states.values())
        self._process = ctx.Process(
            target=worker.run, name="ltrr-learner", daemon=True,
            args=(child, states, self._publish_interval, self._snapshot_interval, self._nice),
        )
        self._process.start()
        # The child ignores SIGTERM (the server stops it after its final snapshots), so a program
        # that exits without stop() would wait for it forever at exit: kill it then instead. What
        # it had not snapshotted is replayed from the log at the next start.
        atexit.register(_kill_if_alive, self._process)
        child.close()
        self._conn = parent
        self._states.clear()
        self.alive = True
        self._metrics.learner_up.set(1)
        threading.Thread(target=self._send_loop, name="ltrr-learner-send", daemon=True).start()
        threading.Thread(target=self._receive_loop, name="ltrr-learner-receive", daemon=True).start()

    # --- feeding --------------------------------------------------------------------------
    def put_many(self, events: list[JoinedEvent]) -> None:
        if self._process is None:
            self._pre_start.extend(events)
            return
        if not self.alive:
            return  # they are in the log: the next start replays them
        self._give(("events", list(map(worker.pack, events))))

    def backlog(self, policy: str, enqueued: int) -> int:
        """Joined events handed over and not yet learned; 0 while no learner runs to take them."""
        return max(0, enqueued - self.learned.get(policy, 0)) if self.alive else 0

    def snapshot(self, policy: str, trigger: str = "admin") -> Future[SnapshotInfo]:
        fut: Future[SnapshotInfo] = Future()
        if not self.alive:
            fut.set_exception(FailedPrecondition("the learner process is not running; restart the server"))
            return fut
        request_id = next(self._request_ids)
        self._pending_snapshots[request_id] = fut
        self._give(("snapshot", request_id, policy, trigger))
        return fut

    def stop(self, timeout: float = 60.0) -> None:
        """Learns what is queued, writes a final snapshot of every changed policy, stops the process.

        A child that was given nothing since its start has nothing to learn or snapshot: it is
        killed at once instead of being waited for, which would take its whole start-up
        (importing VW; about a second on a slow machine) when the server stops soon after starting.
        """
        if self._process is None:
            return
        if self._idle_since_start:
            self._stopped.set()  # before the kill: its end is not the unexpected exit it looks like
            _kill_if_alive(self._process)
        elif self.alive:
            self._outbox.put(("stop",))
            if not self._stopped.wait(timeout):
                log.error("learner did not stop within %.0fs; killing it", timeout)
        self._outbox.put(None)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()

    def _give(self, msg: tuple[Any, ...]) -> None:
        """Queues work for the child: from then on, stop() waits for it to learn and snapshot."""
        self._idle_since_start = False
        self._outbox.put(msg)

    # --- threads ----------------------------------------------------------------------------
    def _send_loop(self) -> None:
        assert self._conn is not None
        while True:
            msg = self._outbox.get()
            if msg is None:
                return
            try:
                self._conn.send(msg)  # pickles here, off the event loop; blocks when the child lags
            except (OSError, ValueError):
                return

    def _receive_loop(self) -> None:
        assert self._conn is not None
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            try:
                if self._handle(msg):
                    break
            except Exception:
                log.exception("learner message %r failed", msg[0])
        if not self._stopped.is_set():
            log.error("the learner process exited unexpectedly: decisions keep the last published model, "
                      "rewards are still logged; restart the server to learn them")
        self.alive = False
        self._metrics.learner_up.set(0)
        self._stopped.set()
        for fut in self._pending_snapshots.values():
            if not fut.done():
                fut.set_exception(FailedPrecondition("the learner process stopped"))

    def _handle(self, msg: tuple[Any, ...]) -> bool:
        kind = msg[0]
        if kind == "publish":
            _, policy, lineage, data, version, lag, learned = msg
            self._count_learned(policy, learned)
            self._publish(policy, lineage, PolicyModel.from_bytes(data, self._kinds[policy]), version, lag)
        elif kind == "snapshot":
            _, request_id, policy, trigger, lineage, data, version, last_seq, error = msg
            fut = self._pending_snapshots.pop(request_id, None) if request_id else None
            try:
                if error:
                    raise NotFound(error) if "not found" in error else FailedPrecondition(error)
                info = self._write_snapshot(policy, trigger, lineage, data, version, last_seq)
            except Exception as exc:
                if fut is not None:
                    fut.set_exception(exc)
                else:
                    log.warning("%s snapshot of %s failed: %s", trigger, policy, exc)
            else:
                if fut is not None:
                    fut.set_result(info)
        elif kind == "stopped":
            self._stopped.set()
            return True
        return False

    def _count_learned(self, policy: str, learned: int) -> None:
        before = self.learned.get(policy, 0)
        self.learned[policy] = learned
        if learned > before:
            self._metrics.learned.labels(policy).inc(learned - before)

    def _write_snapshot(self, policy: str, trigger: str, lineage: int, data: bytes, version: int,
                        last_seq: int) -> SnapshotInfo:
        now = time.time()
        row = SnapshotRow(policy, lineage, version, last_seq, trigger, now, len(data), data)
        # The joined rows up to last_seq were queued before the events reached the learner: they
        # are in this commit or an earlier one.
        self._writer.submit("snapshots", [row], force=True).result(timeout=60)
        self._metrics.snapshots.labels(policy, trigger).inc()
        return SnapshotInfo(self._snapshot_ids(policy), policy, version, last_seq, now, len(data))


def _kill_if_alive(process: Any) -> None:
    if process.is_alive():
        process.kill()
