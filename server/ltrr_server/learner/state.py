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

    def learn(self, ev: JoinedEvent) -> None:
        """One joined event: per slot, the chosen action, its probability, and cost = -reward."""
        cost = -ev.reward
        self.model.learn_one(
            ev.shared, ev.actions, [(idx, cost, prob) for idx, prob in ev.chosen], slots=len(ev.chosen)
        )
        self.last_seq = ev.seq
        self.learned += 1
