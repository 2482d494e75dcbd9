"""One policy's learning model and its position in the joined-event log."""

from __future__ import annotations

from dataclasses import dataclass

from ltrr_server.log.joiner import JoinedEvent
from ltrr_server.policy.model import PolicyModel


@dataclass
class LearnerState:
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
    # The last model known finite (set, restored or published): where a model that turns
    # non-finite goes back to (``PolicyModel.finite``).
    last_good: bytes | None = None

    def learn(self, seq: int, shared: str, actions: list[str], chosen: list[tuple[int, float]],
              reward: float) -> None:
        """One joined event: per slot, the chosen action and its probability; cost = -reward."""
        self.model.learn_one(shared, actions, [(idx, -reward, prob) for idx, prob in chosen], slots=len(chosen))
        self.last_seq = seq
        self.learned += 1

    def learn_event(self, ev: JoinedEvent) -> None:
        self.learn(ev.seq, ev.shared, ev.actions, ev.chosen, ev.reward)

    def keep_finite(self) -> bool:
        """Whether the model is finite; one that turned NaN or infinite (it would answer NaN
        probabilities, and learning never brings it back) goes back to ``last_good``, losing what it
        learned since (the caller reports how many, and counts them as no longer unpublished)."""
        if self.model.finite():
            return True
        if self.last_good is not None:
            self.model = PolicyModel.from_bytes(self.last_good, self.model.frame)
        return False
