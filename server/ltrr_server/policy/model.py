"""One Vowpal Wabbit workspace behind explicit verbs: ``predict_one`` and ``learn_one``.

A model instance belongs to one thread: the learner owns one per policy and
publishes copies (``to_bytes`` / ``from_bytes``) to the decision path, which owns its own.

>>> from ltrr_server.config import PolicySpec
>>> spec = PolicySpec(name="p", epsilon=0.2)
>>> m = PolicyModel.create(spec)
>>> shared = "shared |user seg=a"
>>> actions = ["|A id=x", "|A id=y"]
>>> [round(p, 2) for p in m.predict_one(shared, actions)[0]]
[0.5, 0.5]
>>> m.learn_one(shared, actions, [(1, -1.0, 0.5)])
>>> probs = m.predict_one(shared, actions)[0]
>>> probs[1] > probs[0]
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import vowpal_wabbit_next as vw
from vowpal_wabbit_next import _core

from ltrr_server.bounds import MAX_ABS_REWARD
from ltrr_server.config import PolicySpec
from ltrr_server.features import SLOT_NAMESPACE, without_tiny_values

_ACTION_CACHE_SIZE = 10_000

# (chosen action index, cost, probability) per slot.
SlotLabel = tuple[int, float, float]


@dataclass(frozen=True, slots=True)
class ModelFrame:
    """What a model's bytes do not say, so whoever reads them back (another thread, the learner
    process, a restore, an evaluation) must be told: one record, handed on whole, so a setting
    added here reaches every reader at once.

    >>> from ltrr_server.config import PolicySpec
    >>> ModelFrame.of(PolicySpec(name="p", reward_scale=40.0))
    ModelFrame(kind='cb', cb_type='dm', reward_scale=40.0)
    """

    kind: str  # "cb" (one slot) or "ccb" (several slots of distinct actions)
    # VW itself only offers mtr with squarecb: "dm" learns every decision with weight 1 by giving
    # VW probability 1 (config.PolicySpec.cb_type says why).
    cb_type: str
    # The model learns cost / reward_scale (config.PolicySpec.reward_scale).
    reward_scale: float = 1.0

    @classmethod
    def of(cls, spec: PolicySpec) -> ModelFrame:
        return cls(spec.kind, spec.cb_type, spec.reward_scale)


class PolicyModel:
    """A contextual-bandit model: cb (one slot) or ccb (several slots of distinct actions)."""

    def __init__(self, workspace: vw.Workspace[Any], frame: ModelFrame, coin: bool = False) -> None:
        self._ws = workspace
        self._parser = vw.TextFormatParser(workspace)
        self.frame = frame
        self._weighted = frame.cb_type == "mtr"
        # Coin betting turns NaN on numeric values too small for float32 (features.COIN_MIN_ABS_VALUE):
        # its lines have them written as 0. ``coin`` is in the model's own options, so a model
        # read back from bytes knows it too.
        self.coin = coin
        # The decision path calls the extension module under the public wrapper: the wrapper's
        # per-call label checks and Example objects cost twice the prediction itself (~7 us of
        # ~11), and every example here comes from this workspace's own parser. Pinned to
        # vowpal-wabbit-next 0.7.0; tests/server/policy covers both paths agreeing.
        self._core_ws: Any = workspace._workspace
        # Parsed action examples, reused across predictions (not across learning, which labels them):
        # parsing dominates a prediction and the same actions come back request after request.
        self._action_cache: dict[str, Any] = {}

    @classmethod
    def create(cls, spec: PolicySpec) -> PolicyModel:
        return cls(vw.Workspace(spec.vw_args()), ModelFrame.of(spec), coin=spec.optimizer == "coin")

    @classmethod
    def reward_regression(cls, interactions: Sequence[str]) -> PolicyModel:
        """A model of each action's reward (VW ``--cb_adf --cb_type dm``: a regression on the
        logged actions, no importance weights), for the doubly robust estimator; its
        ``predict_one`` gives each action's estimated cost (-reward), not a probability."""
        args = ["--cb_adf", "--cb_type", "dm", "--quiet"]
        for inter in interactions:
            args += ["-q" if len(inter) == 2 else "--cubic", inter]
        return cls(vw.Workspace(args), ModelFrame("cb", "dm"))

    @classmethod
    def from_bytes(cls, data: bytes, frame: ModelFrame) -> PolicyModel:
        return cls(vw.Workspace(["--quiet"], model_data=data), frame, coin=_learns_by_coin(data))

    def to_bytes(self) -> bytes:
        return bytes(self._ws.serialize())

    def copy(self) -> PolicyModel:
        """An independent model with the same weights (for another thread or process to use)."""
        return PolicyModel.from_bytes(self.to_bytes(), self.frame)

    def finite(self) -> bool:
        """Whether every weight (and every optimizer state beside it) is a finite number: a model
        that is not gives NaN probabilities, and learning never brings it back.

        One dot product of the weights with themselves answers it in a pass over memory (after
        2,000 learned events: 0.13 ms for 2^18 weights, 0.26 ms with coin betting's state, 4.5 ms
        for 2^24, against 1.1, 1.7 and 58 ms to serialize them for the publish it precedes): it is
        finite when every weight is, and NaN or infinite when one is not. Only a finite model whose squared
        norm overflows float32 needs the second, exact look.

        >>> from ltrr_server.config import PolicySpec
        >>> PolicyModel.create(PolicySpec(name="p")).finite()
        True
        """
        w = np.asarray(self._ws.weights()).reshape(-1)
        return math.isfinite(float(np.dot(w, w))) or bool(np.isfinite(w).all())

    def _examples(
        self, shared: str, actions: Sequence[str], slots: int, labels: Sequence[SlotLabel]
    ) -> list[Any]:
        """The labelled examples of one decision, parsed for the extension module (see ``__init__``):
        the wrapper's label checks and Example objects were a third of a learn (~2.6 of ~7 s per
        20k events replayed); tests/server/policy checks learning on both paths gives one model."""
        parse = self._parse_raw
        # Rewards past bounds.MAX_ABS_REWARD are refused, but a log written before that bound may
        # hold one, and its cost would overflow the model's weights for good.
        scale = self.frame.reward_scale
        labels = [(idx, min(max(cost / scale, -MAX_ABS_REWARD), MAX_ABS_REWARD), prob if self._weighted else 1.0)
                  for idx, cost, prob in labels]
        if self.frame.kind == "cb":
            idx, cost, prob = labels[0]
            lines = [shared, *actions]
            lines[idx + 1] = f"0:{cost!r}:{prob!r} {actions[idx]}"
            return [parse(line) for line in lines]
        lines = [f"ccb {shared}"] + [f"ccb action {a}" for a in actions]
        for s in range(slots):
            if s < len(labels):
                idx, cost, prob = labels[s]
                lines.append(f"ccb slot {idx}:{cost!r}:{prob!r} |{SLOT_NAMESPACE} slot={s}")
            else:
                lines.append(f"ccb slot |{SLOT_NAMESPACE} slot={s}")
        return [parse(line) for line in lines]

    def _parse_raw(self, line: str) -> Any:
        if self.coin:
            line = without_tiny_values(line)
        return _core._parse_line_text(self._core_ws, line)

    def _cached(self, line: str) -> Any:
        ex = self._action_cache.get(line)
        if ex is None:
            if len(self._action_cache) >= _ACTION_CACHE_SIZE:
                self._action_cache.clear()
            ex = self._action_cache[line] = self._parse_raw(line)
        return ex

    def predict_one(self, shared: str, actions: Sequence[str], slots: int = 1,
                    given: Sequence[int] = ()) -> list[list[float]]:
        """Per slot, the probability of every action (by action index; 0 for actions not eligible).
        A multi-slot model's slot s is predicted without the actions ``given`` to slots 0..s-1
        (``predict_slot``): ``given`` holds at least ``slots - 1`` of them."""
        if self.frame.kind != "cb":
            if len(given) < slots - 1:
                raise ValueError(f"{slots} slots need the actions of the first {slots - 1}, got {len(given)}")
            return [self.predict_slot(shared, actions, s, given[:s]) for s in range(slots)]
        examples = [self._parse_raw(shared)] + [self._cached(a) for a in actions]
        probs = [0.0] * len(actions)
        for idx, p in cast(list[tuple[int, float]], self._core_ws.predict_multi_ex_one(examples)):
            probs[idx] = float(p)
        return [probs]

    def predict_slot(self, shared: str, actions: Sequence[str], slot: int, taken: Sequence[int]) -> list[float]:
        """A multi-slot model's probability of every action for slot ``slot``, over the actions
        not ``taken`` by the slots before it (0 for those).

        VW's own prediction of several slots leaves out of each later slot the action it ranked
        first in the earlier ones, not the one the server drew there: whenever the first slot
        explored, the action VW ranked first was in no slot of the page. So each slot is asked
        for on its own, with the actions still free (VW's include list).
        """
        free = ",".join(str(i) for i in range(len(actions)) if i not in taken)
        examples = ([self._parse_raw(f"ccb {shared}")] + [self._cached(f"ccb action {a}") for a in actions]
                    + [self._parse_raw(f"ccb slot {free} |{SLOT_NAMESPACE} slot={slot}")])
        probs = [0.0] * len(actions)
        (pred,) = cast(list[list[tuple[int, float]]], self._core_ws.predict_multi_ex_one(examples))
        for idx, p in pred:
            probs[idx] = float(p)
        return probs

    def learn_one(
        self, shared: str, actions: Sequence[str], labels: Sequence[SlotLabel], slots: int = 1
    ) -> None:
        """Learns one logged decision: per slot, the chosen action, its cost (-reward) and probability."""
        self._core_ws.learn_multi_ex_one(self._examples(shared, actions, max(slots, len(labels)), labels))


def finite_probabilities(per_slot: Sequence[Sequence[float]]) -> bool:
    """Whether every slot's probabilities are finite numbers (NaN and infinity both carry
    through a sum: one per slot, not one test per action).

    >>> [finite_probabilities(p) for p in ([[0.5, 0.5]], [[0.5, math.nan]], [[1.0], [math.inf, 0.0]])]
    [True, False, False]
    """
    for probs in per_slot:  # a loop, not all() over a generator: 0.13 us a decision, not 0.27
        if not math.isfinite(sum(probs)):
            return False
    return True


def _learns_by_coin(data: bytes) -> bool:
    """Whether a serialized model learns by coin betting, read from the options in its header
    (`` --cb_adf --cb_explore_adf ... --coin ...``, NUL-terminated, before any weight)."""
    start = data.find(b" --")
    end = data.find(b"\x00", start)
    return start >= 0 and end > start and b"--coin" in data[start:end].split()
