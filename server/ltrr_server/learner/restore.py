"""A policy's learning state rebuilt from the log: its latest snapshot plus a replay of what followed.

The same code restores a policy when the server starts (in the server's process, before any
call is served, for up to ``RESTORE_SECONDS``: the learner process replays what is left, while
the policy serves) and when a learner process that died is replaced (in the new process, so
that the replay's VW calls do not take the decision path's interpreter lock).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from ltrr_server.config import PolicySpec
from ltrr_server.features import action_line, namespaces_from_json, shared_line
from ltrr_server.learner.state import LearnerState
from ltrr_server.log.joiner import JoinedEvent
from ltrr_server.log.store import EventLogStore
from ltrr_server.policy.model import ModelFrame, PolicyModel

log = logging.getLogger(__name__)

# How long a start replays the log in the server's process before it serves. A stop leaves what
# the learner had not learned to the next start (learner.Learner.stop): 1,000 events of wide
# contexts are 20 s of learning, and the start replayed them all before it served a call, long
# past a container's start-up probe. What is left past this is replayed by the learner process
# while the policy serves the model replayed so far.
RESTORE_SECONDS = 2.0


@dataclass(frozen=True)
class LearnerPolicy:
    """What a learner needs to know of a policy to rebuild its state from the log."""

    spec: PolicySpec
    lineage: int
    # Joined events before this position belong to earlier lineages.
    lineage_start_seq: int
    # The version the decision path serves now: a rebuilt model never publishes a lower one.
    model_version: int = 0


@dataclass
class Restored:
    state: LearnerState
    # The snapshot it started from (None: a fresh model), and how many events were replayed after it.
    snapshot_id: int | None
    replayed: int
    # Decisions made before this time were joined before the snapshot was taken (with margin).
    joins_settled_before: float
    # False when the replay stopped at its deadline: the events after ``state.last_seq`` are not in it.
    complete: bool = True


def event_from_rows(ev: dict[str, object], policy: str) -> JoinedEvent:
    """A logged decision (and its join, for a replay) as the learner takes it."""
    context = namespaces_from_json(json.loads(str(ev["context"])))
    actions = json.loads(str(ev["actions"]))
    chosen_idx = json.loads(str(ev["chosen"]))
    probs = json.loads(str(ev["probabilities"]))
    return JoinedEvent(
        seq=int(ev["seq"]),  # type: ignore[call-overload]
        event_id=str(ev["event_id"]), policy=policy, lineage=int(ev["lineage"]),  # type: ignore[call-overload]
        shared=shared_line(context),
        actions=[action_line(a, namespaces_from_json(f)) for a, f in actions],
        action_ids=[a for a, _ in actions],
        chosen=[(i, probs[s][i]) for s, i in enumerate(chosen_idx)],
        explored=False, reward=float(ev["reward"]),  # type: ignore[arg-type]
        n_rewards=0, source="replay", oracle_best=None, oracle_chosen=None, joined_at=time.time(),
    )


def restore_state(store: EventLogStore, policy: LearnerPolicy, until_seq: int | None = None,
                  deadline: float | None = None) -> Restored:
    """The policy's latest snapshot of its lineage, then every joined event after it (up to
    ``until_seq``, inclusive), each learned once; with ``deadline`` (``time.monotonic``), the
    replay stops there, incomplete.

    Its version is at least the snapshot's plus the events replayed: every published version
    learned at least one event, so no version served before is ever served again.
    """
    spec = policy.spec
    start_seq = policy.lineage_start_seq
    snap = store.latest_snapshot(spec.name, policy.lineage)
    if snap is not None:
        model = PolicyModel.from_bytes(snap["model"], ModelFrame.of(spec))
        last_seq, version = int(snap["last_joined_seq"]), int(snap["model_version"])
        settled = float(snap["created_at"]) - spec.join_window_seconds - 60.0
        if not model.finite():
            # It would answer NaN probabilities for good: such as a coin-betting model that learned
            # values too small for it before their floor (features.COIN_MIN_ABS_VALUE) existed.
            log.error("policy %s: snapshot %s has NaN or infinite weights; the lineage is learned again from its "
                      "first event instead", spec.name, snap["id"])
            snap = None
    if snap is None:
        model, last_seq, version, settled = PolicyModel.create(spec), start_seq - 1, 0, 0.0
    state = LearnerState(spec.name, policy.lineage, model, last_seq, version, last_snapshot_at=time.time(),
                         last_good=snap["model"] if snap is not None else model.to_bytes())
    replayed = 0
    complete = True
    t0 = time.perf_counter()
    for ev in store.joined_after(spec.name, max(last_seq, start_seq - 1)):
        if until_seq is not None and int(ev["seq"]) > until_seq:
            break
        if deadline is not None and time.monotonic() >= deadline:
            complete = False
            break
        if ev["lineage"] != policy.lineage:
            continue
        state.learn_event(event_from_rows(ev, spec.name))
        state.unsnapshotted += 1
        replayed += 1
    state.version = max(state.version + replayed, policy.model_version)
    log.debug("policy %s: snapshot %s, replayed %d joined events in %.2fs", spec.name,
              snap["id"] if snap else "none", replayed, time.perf_counter() - t0)
    return Restored(state, int(snap["id"]) if snap else None, replayed, settled, complete)
