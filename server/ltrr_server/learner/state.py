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

    def learn(self, seq: int, shared: str, actions: list[str], chosen: list[tuple[int, float]],
              reward: float) -> None:
        """One joined event: per slot, the chosen action and its probability; cost = -reward."""
        self.model.learn_one(shared, actions, [(idx, -reward, prob) for idx, prob in chosen], slots=len(chosen))
        self.last_seq = seq
        self.learned += 1

    def learn_event(self, ev: JoinedEvent) -> None:
        self.learn(ev.seq, ev.shared, ev.actions, ev.chosen, ev.reward)
