"""What the server (``Learner``) and its learner process (``worker``) say to each other over their
pipe: one named message per verb, read by field at both ends.

Until 2026-11-30 these were tuples read by position (a snapshot's answer had nine), so adding a
field meant changing two unpacking sites in two processes in step. What crosses per event is
still a tuple (``Packed``): it is made in C by ``pack`` once per learned reward, and one
message carries a batch of them.

>>> import pickle
>>> pickle.loads(pickle.dumps(TakeSnapshot(7, "demo", "admin")))
TakeSnapshot(request_id=7, policy='demo', trigger='admin')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltrr_server.log.joiner import JoinedEvent
    from ltrr_server.policy.model import ModelFrame

# What crosses the pipe per event, no more than learning needs:
# (seq, policy, lineage, shared, actions, chosen, reward, joined_at).
Packed = tuple[int, str, int, str, list[str], list[tuple[int, float]], float, float]

# pack(joined event) -> Packed, read off the event in C: it runs once per learned reward.
pack: Callable[[JoinedEvent], Packed] = attrgetter(
    "seq", "policy", "lineage", "shared", "actions", "chosen", "reward", "joined_at")


# --- from the server to the learner process ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LearnEvents:
    """Joined events to learn, in the order they were joined."""

    events: list[Packed]


@dataclass(frozen=True, slots=True)
class SetState:
    """A policy's model and place in the log, to learn on from: each policy the server restored,
    handed to a first learner process at its start (with its counts), or later a policy added or a
    new lineage of one (a reset, a tuning applied)."""

    policy: str
    lineage: int
    frame: ModelFrame  # what the model's bytes do not say
    model: bytes
    last_seq: int
    version: int
    # Joined events learned, and learned since the last snapshot (the restored ones' counts).
    learned: int = 0
    unsnapshotted: int = 0


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Asks for a snapshot of a policy's model; answered by ``SnapshotTaken`` with the same id
    (0: nobody waits for it)."""

    request_id: int
    policy: str
    trigger: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Publish and snapshot what changed, answer ``Stopped``, exit."""


# --- from the learner process to the server ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Published:
    """A policy's model after learning: the decision path serves it from now on."""

    policy: str
    lineage: int
    model: bytes
    version: int
    # Seconds from the oldest join in it to its publication.
    lag: float
    # Joined events taken for this policy since the server's start (learned, or skipped as an
    # earlier lineage's): the server's backlog is what it handed over minus this.
    learned: int


@dataclass(frozen=True, slots=True)
class ModelRejected:
    """A policy's model turned non-finite (NaN or infinite weights) and was not published: the
    learner went back to the last model it published (``rolled_back``; else there was none), and
    the ``dropped`` joined events learned since are not in it. Decisions keep the last one served."""

    policy: str
    lineage: int
    version: int
    dropped: int
    rolled_back: bool


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    """The answer to ``TakeSnapshot``, or a scheduled or final snapshot (``request_id`` 0); ``error``
    says why there is none (the model is then empty)."""

    request_id: int
    policy: str
    trigger: str
    lineage: int
    model: bytes
    version: int
    last_seq: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Restored:
    """A replacement learner process has rebuilt every policy from the log (``RestoreFromLog``):
    from now on its state holds more than the snapshots and the log, and is worth a final snapshot."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """The last message of a learner process that was told to ``Stop``."""


ToLearner = LearnEvents | SetState | TakeSnapshot | Stop
FromLearner = Published | ModelRejected | SnapshotTaken | Restored | Stopped
