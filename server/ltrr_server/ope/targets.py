"""The policies an evaluation can estimate: one small interface, ``Target``, and its kinds.

A target gives, for a logged event, the probability of every action in every slot. A target
that learns (a candidate configuration replayed over the log) is then shown the logged outcome:
it predicts each event before it learns it (progressive validation), so its estimate is that of
the policy it would have been, online, on this traffic.

>>> from ltrr_server.log.events import LoggedEvent
>>> ev = LoggedEvent(dict(seq=1, created_at=0.0, reward=1.0, context='[["u", [["seg", "a"]]]]',
...                       actions='[["x", []], ["y", []], ["z", []]]', chosen="[1]",
...                       probabilities="[[0.25, 0.5, 0.25]]"))
>>> ConstantTarget("y").probabilities(ev)
[[0.0, 1.0, 0.0]]
>>> TableTarget({"x": 3.0, "y": 1.0}).probabilities(ev)
[[0.75, 0.25, 0.0]]
>>> TableTarget({}, feature=("u", "seg"), by_value={"a": {"z": 1.0}}).probabilities(ev)
[[0.0, 0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Mapping

from ltrr_server.config import PolicySpec
from ltrr_server.log.events import LoggedEvent
from ltrr_server.policy.model import PolicyModel


class Target:
    """A policy to evaluate. ``name`` labels its results."""

    name: str = ""

    def probabilities(self, event: LoggedEvent) -> list[list[float]]:
        """Per slot, the probability of each of the event's actions (by index)."""
        raise NotImplementedError

    def learn(self, event: LoggedEvent) -> None:
        """Shown each event's outcome after ``probabilities``; only a replayed candidate learns."""

    def unmatched(self, events: int) -> str:
        """After ``events`` events, why its estimate would only be another target's ('' when it
        is its own): an action or a table that no event offered falls back to uniform on each,
        and a typo in an action id would otherwise get uniform's figures under its own name."""
        return ""


def _uniform_over(n: int, excluded: set[int]) -> list[float]:
    left = n - len(excluded)
    return [0.0 if i in excluded or left <= 0 else 1.0 / left for i in range(n)]


def _slotted(event: LoggedEvent, first: list[float]) -> list[list[float]]:
    """Slot 0's distribution, and for later slots of a multi-slot decision the same one over the
    actions the logged earlier slots left (renormalized; uniform over them when it has no mass)."""
    out = [first]
    for s in range(1, event.slots):
        taken = set(event.chosen[:s])
        probs = [0.0 if i in taken else p for i, p in enumerate(first)]
        total = sum(probs)
        out.append([p / total for p in probs] if total > 0 else _uniform_over(len(first), taken))
    return out


class UniformTarget(Target):
    name = "uniform"

    def probabilities(self, event: LoggedEvent) -> list[list[float]]:
        return _slotted(event, _uniform_over(len(event.action_ids), set()))


class ConstantTarget(Target):
    """Always the action ``action_id`` (uniform among the others when a decision does not offer it)."""

    def __init__(self, action_id: str) -> None:
        self.action_id = action_id
        self.name = f"action:{action_id}"
        self.offered = 0  # events that offered it

    def probabilities(self, event: LoggedEvent) -> list[list[float]]:
        ids = event.action_ids
        if self.action_id in ids:
            self.offered += 1
            first = [0.0] * len(ids)
            first[ids.index(self.action_id)] = 1.0
        else:
            first = _uniform_over(len(ids), set())
        return _slotted(event, first)

    def unmatched(self, events: int) -> str:
        if self.offered:
            return ""
        return (f"action {self.action_id!r} was offered by none of the {events:,} events: its estimate would be "
                "uniform's")


class TableTarget(Target):
    """A stochastic policy given as action id -> weight (normalized over the actions a decision
    offers), optionally one table per value of one context feature, with ``default`` for others.
    A decision offering none of a table's actions gets the uniform distribution.

    A number feature's value is matched as a number: "2" and "2.0" both name 2.0 (a log keeps
    numbers as Python prints them, and a table written by hand says "2").

    >>> TableTarget({}, ("n", "age"), {"2": {"x": 1.0}}).by_value["2.0"]
    {'x': 1.0}
    """

    def __init__(self, default: Mapping[str, float], feature: tuple[str, str] | None = None,
                 by_value: Mapping[str, Mapping[str, float]] | None = None, name: str = "table") -> None:
        self.default = dict(default)
        self.feature = feature
        self.by_value = {k: dict(v) for k, v in (by_value or {}).items()}
        for key, table in list(self.by_value.items()):
            try:
                number = float(key)
            except ValueError:
                continue
            self.by_value.setdefault(repr(number), table)  # a key written as the log writes it wins
        self.named_values = sorted(by_value or {})
        self.name = name
        self.weighed = 0  # events that offered an action it gives weight to
        self.keyed = 0  # events whose feature had one of its values
        self.seen: set[str] = set()  # a few values the events had, for the message when none matched

    def probabilities(self, event: LoggedEvent) -> list[list[float]]:
        table = self.default
        if self.feature is not None:
            value = event.feature(*self.feature)
            if value is not None and value in self.by_value:
                table = self.by_value[value]
                self.keyed += 1
            elif len(self.seen) < 3:
                self.seen.add("(none)" if value is None else value)
        weights = [table.get(a, 0.0) for a in event.action_ids]
        total = sum(weights)
        if total > 0:
            self.weighed += 1
            first = [w / total for w in weights]
        else:
            first = _uniform_over(len(weights), set())
        return _slotted(event, first)

    def unmatched(self, events: int) -> str:
        if self.weighed:
            return ""
        named = sorted({a for t in (self.default, *self.by_value.values()) for a, w in t.items() if w > 0})
        listed = ", ".join(repr(a) for a in named[:5]) + (", ..." if len(named) > 5 else "")
        why = f"none of the {events:,} events offered an action it gives weight to ({listed or 'none'})"
        if self.feature is not None and self.named_values and not self.keyed:
            values = ", ".join(repr(v) for v in self.named_values[:5]) + (", ..." if len(self.named_values) > 5 else "")
            had = ", ".join(repr(v) for v in sorted(self.seen))
            why = (f"no event's {'.'.join(self.feature)} was one of its values ({values}; the events had {had}, ...), "
                   f"and its default gives weight to no action they offered")
        return f"{why}: its estimate would be uniform's"


class ModelTarget(Target):
    """A fixed learned model (the live one, or a snapshot): its exploration distribution."""

    def __init__(self, model: PolicyModel, name: str) -> None:
        self.model = model
        self.name = name

    def probabilities(self, event: LoggedEvent) -> list[list[float]]:
        # A later slot's distribution is over the actions the logged earlier slots left.
        return self.model.predict_one(event.shared, event.action_lines, event.slots, event.chosen)


class ReplayTarget(ModelTarget):
    """A learning configuration replayed over the log from a fresh model, in order: each event is
    predicted, then learned with its logged action, probability and reward."""

    def __init__(self, spec: PolicySpec, name: str) -> None:
        super().__init__(PolicyModel.create(spec), name)
        self.spec = spec

    def learn(self, event: LoggedEvent) -> None:
        labels = [(i, -event.reward, p) for i, p in zip(event.chosen, event.logged, strict=True)]
        self.model.learn_one(event.shared, event.action_lines, labels, slots=event.slots)
