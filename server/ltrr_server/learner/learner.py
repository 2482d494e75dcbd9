"""The learner: a process of its own, fed joined events, publishing model copies and snapshots.

Why a process: VW holds the GIL inside every call. Learning in a thread would take its share
of the one interpreter lock from the decision path and from reward ingest (a learn is ~35 us,
as long as a whole ingest of one reward), so on a busy server learning and serving would slow
each other down. In a child process the learner runs on the other core, and the main process
only pickles batches of joined events to it and takes back a serialized model every
``publish_interval`` seconds, which it loads as a fresh copy for the decision path.

Before ``start`` (restore at start-up) the same ``LearnerState`` learns in the main process:
the snapshot is loaded and the joined events after it replayed before any call is served, for
up to ``restore.RESTORE_SECONDS``; a policy with more to replay serves what was replayed, and
the process replays it again from its snapshot to the end of the log when it starts.

A learner process that dies is replaced by ``restart`` (the supervisor calls it): the new
process rebuilds every policy from its latest snapshot and replays the joined events after it,
up to the last event handed to the dead one (at least the end of the log the start read);
events joined from then on go to the new one. Each event is learned once: those up to the cut
from the log, the later ones from the pipe.
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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ltrr_server.errors import FailedPrecondition, NotFound
from ltrr_server.learner import worker
from ltrr_server.learner.messages import (
    FromLearner,
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
    pack,
)
from ltrr_server.learner.restore import LearnerPolicy
from ltrr_server.learner.state import LearnerState
from ltrr_server.log.joiner import JoinedEvent
from ltrr_server.log.rows import SnapshotRow
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.logs import DEFAULT_LOGS, LogSetup
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import ModelFrame, PolicyModel
from ltrr_server.tracing import NO_TRACER, Pending, Tracer

log = logging.getLogger(__name__)

__all__ = ["Learner", "LearnerPolicy", "LearnerState", "SnapshotInfo"]

# How long a restart waits for the joined events handed to the dead process to be committed.
_RESTART_BARRIER_SECONDS = 30.0


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


@dataclass
class _Process:
    """One learner process and the pipe and threads that talk to it."""

    process: Any
    conn: Connection
    outbox: queue.SimpleQueue[ToLearner | None] = field(default_factory=queue.SimpleQueue)
    stopped: threading.Event = field(default_factory=threading.Event)
    # Nothing for it to learn or snapshot yet: stop() then need not wait for it.
    idle: bool = True
    # A replacement still rebuilding every policy from the log (until ``Restored``): its state is
    # still only the snapshots and the log, so stop() ends it instead of waiting for the replay
    # (37 s, after a learner killed during an import of 3,000 wide contexts).
    restoring: bool = False
    # Its exit was asked for (stop), or it was replaced: not the crash it would look like.
    expected_exit: bool = False
    # Set by stop(): the child leaves what it has not learned yet, even in the batch at hand.
    leave: Any = None


def _drop_learning(outbox: queue.SimpleQueue[ToLearner | None]) -> int:
    """Takes the events not yet sent out of ``outbox``, keeping every other message in its order;
    how many events it took. The send thread may take messages meanwhile: those are sent."""
    kept: list[ToLearner | None] = []
    dropped = 0
    while True:
        try:
            msg = outbox.get_nowait()
        except queue.Empty:
            break
        if isinstance(msg, LearnEvents):
            dropped += len(msg.events)
        else:
            kept.append(msg)
    for msg in kept:
        outbox.put(msg)
    return dropped


class Learner:
    """Front of the learner process, in the server process. Thread-safe."""

    def __init__(
        self, writer: EventLogWriter, metrics: Metrics, publish: Publish,
        publish_interval: float, snapshot_interval: float, nice: int = 0, db_url: str = "",
        policies: Callable[[], list[LearnerPolicy]] | None = None, logs: LogSetup = DEFAULT_LOGS,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self._logs = logs
        # Traced decisions' "learn" spans, ended by the publish whose learned count covers them.
        self._learning = Pending(tracer)
        self._writer = writer
        self._metrics = metrics
        self._publish = publish
        self._publish_interval = publish_interval
        self._snapshot_interval = snapshot_interval
        self._nice = nice
        self._db_url = db_url
        self._policies = policies
        self._states: dict[str, LearnerState] = {}
        # Per policy, what its model's bytes do not say, to read back the models it publishes.
        self._frames: dict[str, ModelFrame] = {}
        self._pre_start: list[JoinedEvent] = []
        # Per policy whose start-up replay stopped at its deadline, the joined events left: the
        # process replays it from the log when it starts (they count in its backlog until then);
        # the recovered joins among ``_pre_start`` wait for it in ``_after_start``.
        self._replay_left: dict[str, int] = {}
        self._after_start: list[JoinedEvent] = []
        self._pending_snapshots: dict[int, Future[SnapshotInfo]] = {}
        self._request_ids = itertools.count(1)
        # Held while events are handed over and while a restart takes its cut.
        self._lock = threading.Lock()
        self._current: _Process | None = None
        self._started = False
        self._stopping = False
        # The last joined event handed over, and how many were handed over per policy (the
        # learner's consumed count is compared with it: the backlog).
        self._last_seq = 0
        self._handed: dict[str, int] = {}
        self.learned: dict[str, int] = {}
        self.alive = False

    # --- before start: restore in this process ------------------------------------------
    def set_state(self, state: LearnerState, replay_left: int = 0) -> None:
        """Adds a policy or replaces its lineage (after a reset). Before the start, ``replay_left``:
        ``state`` lacks that many joined events of the log (the start-up replay stopped at its
        deadline), which the process replays when it starts, before it learns anything new of
        the policy; they count in its backlog until then."""
        self._frames[state.policy] = state.model.frame
        self._metrics.models_rejected.labels(state.policy)  # at 0: a first rejection is an increase
        if not self._started:
            self._states[state.policy] = state
            if replay_left > 0:
                self._replay_left[state.policy] = replay_left
            else:
                self._replay_left.pop(state.policy, None)
            return
        with self._lock:
            current = self._current
            if current is not None and (self.alive or current.process is None):  # running, or restarting
                self._give(current, SetState(state.policy, state.lineage, state.model.frame, state.model.to_bytes(),
                                             state.last_seq, state.version))
            # Otherwise the restart rebuilds the new lineage from the policies it is given.

    def drain_before_start(self) -> None:
        """Learns, in this process, the joins recovered at start-up; then publishes every policy."""
        assert not self._started
        for state in self._states.values():
            state.learned = 0  # counts what this process learns of its own joins, not the replay
        for ev in self._pre_start:
            self._last_seq = max(self._last_seq, ev.seq)
            if ev.policy in self._replay_left:
                self._after_start.append(ev)  # after the process's replay, which ends before it
                continue
            target = self._states.get(ev.policy)
            if target is not None and target.lineage == ev.lineage:
                target.learn_event(ev)
                target.unsnapshotted += 1
        self._pre_start.clear()
        for state in self._states.values():
            self.learned[state.policy] = self._handed[state.policy] = state.learned
            if not state.keep_finite():
                self._rejected(ModelRejected(state.policy, state.lineage, state.version, state.unsnapshotted,
                                             rolled_back=state.last_good is not None))
                if state.last_good is None:
                    continue  # decisions keep the model the policy was installed with
            state.version += 1
            self._publish(state.policy, state.lineage, state.model.copy(), state.version, 0.0)

    def start(self, log_end: int = 0) -> None:
        """Starts the process with the states restored here; those left to rebuild are replayed
        from the log there, up to ``log_end`` (the last joined event logged before the start)."""
        states = [SetState(s.policy, s.lineage, s.model.frame, s.model.to_bytes(), s.last_seq, s.version, s.learned,
                           s.unsnapshotted) for s in self._states.values()]
        restore = None
        if self._replay_left:
            assert self._policies is not None and self._db_url, "a rebuild needs the log and its policies"
            restore = worker.RestoreFromLog(self._db_url,
                                            [p for p in self._policies() if p.spec.name in self._replay_left],
                                            log_end, {})
        proc = self._spawn(worker.WorkerStart(states=states, restore=restore))
        proc.idle = restore is None and not any(s.unsnapshotted for s in self._states.values())
        proc.restoring = restore is not None
        self._states.clear()
        self._started = True
        # What a replacement rebuilds up to: the log the start read, and the joins learned before
        # this process (until 2026-12-01 only the joins handed to it since, so a learner killed
        # before the first of them was rebuilt from the snapshots alone, losing the start's replay).
        self._last_seq = max(self._last_seq, log_end)
        with self._lock:
            self._attach(proc)
        after, self._after_start = self._after_start, []
        self.put_many(after)

    def _spawn(self, start: worker.WorkerStart) -> _Process:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        leave = ctx.Event()
        process = ctx.Process(
            target=worker.run, name="ltrr-learner", daemon=True,
            args=(child, start, self._publish_interval, self._snapshot_interval, self._nice, self._logs, leave),
        )
        process.start()
        # The child ignores SIGTERM (the server stops it after its final snapshots), so a program
        # that exits without stop() would wait for it forever at exit: kill it then instead. What
        # it had not snapshotted is replayed from the log at the next start.
        atexit.register(_kill_if_alive, process)
        child.close()
        return _Process(process, parent, leave=leave)

    def _attach(self, proc: _Process) -> None:
        """Makes ``proc`` the learner (under the lock) and starts its threads."""
        self._current = proc
        self.alive = True
        self._metrics.learner_up.set(1)
        threading.Thread(target=self._send_loop, args=(proc,), name="ltrr-learner-send", daemon=True).start()
        threading.Thread(target=self._receive_loop, args=(proc,), name="ltrr-learner-receive", daemon=True).start()

    @property
    def pid(self) -> int | None:
        """The learner process's id (None before the start or while it is being replaced)."""
        proc = self._current
        return proc.process.pid if proc is not None and proc.process is not None else None

    # --- supervision ------------------------------------------------------------------------
    def running(self) -> bool:
        """Whether a learner process runs (or none should: not started yet, or stopped)."""
        return self.alive or not self._started or self._stopping

    def restart(self) -> None:
        """Replaces a learner process that died: see the module's docstring."""
        if self.running():
            return
        assert self._policies is not None and self._db_url, "a restartable learner needs the log and its policies"
        with self._lock:
            # The cut: every event handed over so far was queued for the log before it was
            # handed over, so the barrier below covers them all. Later ones go to the new process.
            cut, handed = self._last_seq, dict(self._handed)
            old = self._current
            placeholder = _Process(None, None)  # type: ignore[arg-type]
            self._current = placeholder  # events handed over from now on wait in its outbox
        if old is not None:
            old.expected_exit = True
            old.outbox.put(None)
        barrier = self._writer.barrier()
        try:
            barrier.result(timeout=_RESTART_BARRIER_SECONDS)
            if self._stopping:
                raise FailedPrecondition("the server is stopping")
            start = worker.WorkerStart(restore=worker.RestoreFromLog(self._db_url, self._policies(), cut, handed))
            proc = self._spawn(start)
        except BaseException:
            with self._lock:
                if self._current is placeholder:
                    self._current = old
            raise
        with self._lock:
            proc.outbox = placeholder.outbox
            proc.idle = False  # it replays the log: once done, its state is worth a shutdown snapshot
            proc.restoring = True
            self._attach(proc)
        log.info("learner process restarted: policies rebuilt from their snapshots and the log up to joined "
                 "event %d", cut)

    # --- feeding --------------------------------------------------------------------------
    def put_many(self, events: list[JoinedEvent]) -> None:
        if not events:
            return
        if not self._started:
            self._pre_start.extend(events)
            return
        with self._lock:
            handed = self._handed
            for ev in events:
                count = handed[ev.policy] = handed.get(ev.policy, 0) + 1
                if ev.trace is not None:
                    self._learning.start(ev.policy, count, "learn", ev.trace, {
                        "ltrr.policy": ev.policy, "ltrr.event_id": ev.event_id, "ltrr.reward": ev.reward,
                        "ltrr.rewards": ev.n_rewards, "ltrr.learned": ev.learn}, link=ev.reward_trace)
            self._last_seq = events[-1].seq
            current = self._current
            if current is not None and (self.alive or current.process is None):
                self._give(current, LearnEvents(list(map(pack, events))))
            # A dead process: they are in the log, and its replacement replays them from there.

    def backlog(self, policy: str) -> int:
        """Joined events handed over and not yet learned, and those a start left it to replay; 0
        while no learner runs to take them."""
        if not self.alive:
            return 0
        return max(0, self._handed.get(policy, 0) - self.learned.get(policy, 0)) + self._replay_left.get(policy, 0)

    def snapshot(self, policy: str, trigger: str = "admin") -> Future[SnapshotInfo]:
        """A snapshot of the policy's learning model; the future resolves once it is committed
        (its ``snapshot_id`` is then 0: the caller reads it from the log if it needs it)."""
        fut: Future[SnapshotInfo] = Future()
        with self._lock:
            current = self._current
            if not self.alive or current is None:
                fut.set_exception(FailedPrecondition("the learner process is not running (it is being restarted)"))
                return fut
            request_id = next(self._request_ids)
            self._pending_snapshots[request_id] = fut
            self._give(current, TakeSnapshot(request_id, policy, trigger))
        return fut

    def stop(self, timeout: float = 60.0) -> None:
        """Writes a final snapshot of every changed policy and stops the process.

        Joined events handed over but not learned yet are not learned first (those not yet sent to
        the child, and, through ``leave``, those it holds, even in the batch at hand): a backlog
        (after a bulk import, or of wide contexts) took minutes to learn, while a container is
        killed 10 s (docker) or 30 s (the Helm chart) after it is asked to stop, before the
        rankers were saved or the log's last rows committed. They are in the log, after the final
        snapshot, so the next start learns them.

        A child that was given nothing since its start has nothing to learn or snapshot: it is
        killed at once instead of being waited for, which would take its whole start-up
        (importing VW; about a second on a slow machine) when the server stops soon after starting.
        So is a replacement still rebuilding from the log: what it has is the snapshots and the log.
        """
        self._stopping = True
        with self._lock:
            proc = self._current
        if proc is None or proc.process is None:
            self._learning.abandon("the server stopped before a model that learned it was published")
            return
        proc.expected_exit = True
        if proc.idle or proc.restoring:
            if proc.restoring:
                log.info("stopping: the learner process was still rebuilding the policies from the log; the next "
                         "start does it again")
            proc.stopped.set()
            _kill_if_alive(proc.process)
        elif self.alive:
            if proc.leave is not None:
                proc.leave.set()
            if left := _drop_learning(proc.outbox):
                log.info("stopping: %d joined events not yet sent to the learner (and what it had not learned of its "
                         "batch at hand) are left to the next start, which learns them from the log", left)
            proc.outbox.put(Stop())
            if not proc.stopped.wait(timeout):
                log.error("learner did not stop within %.0fs; killing it", timeout)
        proc.outbox.put(None)
        proc.process.join(5)
        if proc.process.is_alive():
            proc.process.kill()
        self._learning.abandon("the server stopped before a model that learned it was published")

    @staticmethod
    def _give(proc: _Process, msg: ToLearner) -> None:
        """Queues work for the child: from then on, stop() waits for it to learn and snapshot."""
        proc.idle = False
        proc.outbox.put(msg)

    # --- threads ----------------------------------------------------------------------------
    def _send_loop(self, proc: _Process) -> None:
        while True:
            msg = proc.outbox.get()
            if msg is None:
                return
            try:
                proc.conn.send(msg)  # pickles here, off the event loop; blocks when the child lags
            except (OSError, ValueError):
                return

    def _receive_loop(self, proc: _Process) -> None:
        while True:
            try:
                msg = proc.conn.recv()
            except (EOFError, OSError):
                break
            try:
                if self._handle(msg, proc):
                    break
            except Exception:
                log.exception("learner message %s failed", type(msg).__name__)
        proc.outbox.put(None)
        with self._lock:
            if self._current is not proc:
                return  # replaced already
            self.alive = False
        self._metrics.learner_up.set(0)
        proc.stopped.set()
        if not proc.expected_exit:
            proc.process.join(1)
            code = proc.process.exitcode
            log.error("the learner process exited unexpectedly (exit code %s): decisions keep the last published "
                      "model and rewards are still logged; it is being restarted", code)
        for request_id in list(self._pending_snapshots):
            fut = self._pending_snapshots.pop(request_id)
            _settle(fut, error=FailedPrecondition("the learner process stopped"))

    def _handle(self, msg: FromLearner, proc: _Process) -> bool:
        """Acts on one message from the learner process; True once it has stopped."""
        if isinstance(msg, Published):
            self._count_learned(msg.policy, msg.learned)
            self._publish(msg.policy, msg.lineage, PolicyModel.from_bytes(msg.model, self._frames[msg.policy]),
                          msg.version, msg.lag)
        elif isinstance(msg, ModelRejected):
            self._rejected(msg)
        elif isinstance(msg, SnapshotTaken):
            fut = self._pending_snapshots.pop(msg.request_id, None) if msg.request_id else None
            if msg.error:
                err = NotFound(msg.error) if "not found" in msg.error else FailedPrecondition(msg.error)
                if fut is not None:
                    _settle(fut, error=err)
                return False
            self._write_snapshot(msg, fut)
        elif isinstance(msg, Restored):
            proc.restoring = False
            self._replay_left.clear()
        elif isinstance(msg, Stopped):
            proc.stopped.set()
            return True
        return False

    def _rejected(self, msg: ModelRejected) -> None:
        self._metrics.models_rejected.labels(msg.policy).inc()
        log.error("policy %s: its learned model has NaN or infinite weights and was not served; %s, and the %d joined "
                  "events learned since are not in it (they stay in the log)", msg.policy,
                  f"the learner went back to version {msg.version}" if msg.rolled_back
                  else "there was no finite model to go back to", msg.dropped)

    def _count_learned(self, policy: str, learned: int) -> None:
        before = self.learned.get(policy, 0)
        self.learned[policy] = learned
        self._learning.reached(policy, learned)
        if learned > before:
            self._metrics.learned.labels(policy).inc(learned - before)

    def _write_snapshot(self, taken: SnapshotTaken, fut: Future[SnapshotInfo] | None) -> None:
        """Queues the snapshot for the log without waiting: a database that is away must not hold
        the learner's messages (or a shutdown) back. ``fut`` resolves once it is committed."""
        now = time.time()
        policy, trigger, size = taken.policy, taken.trigger, len(taken.model)
        row = SnapshotRow(policy, taken.lineage, taken.version, taken.last_seq, trigger, now, size, taken.model)
        info = SnapshotInfo(0, policy, taken.version, taken.last_seq, now, size)

        def committed(done: Future[None]) -> None:
            error = done.exception()
            if error is None:
                self._metrics.snapshots.labels(policy, trigger).inc()
            elif fut is None:
                log.warning("%s snapshot of %s failed: %s", trigger, policy, error)
            if fut is not None:
                _settle(fut, info if error is None else None, error)

        # The joined rows up to last_seq were queued before the events reached the learner: they
        # are in this commit or an earlier one.
        try:
            self._writer.submit("snapshots", [row], force=True).add_done_callback(committed)
        except Exception as exc:  # the log is closing
            if fut is not None:
                _settle(fut, error=exc)


def _settle(fut: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Resolves a future someone may have stopped waiting for (cancelled): then nobody is told."""
    if not fut.set_running_or_notify_cancel():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


def _kill_if_alive(process: Any) -> None:
    if process.is_alive():
        process.kill()
