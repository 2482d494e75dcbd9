"""VW's decision-service JSON (DSJSON): ltrr's logged decisions out, other systems' logs in.

One line per decision, as VW's ``--dsjson`` reader, rlclientlib and Personalizer's exports write
it. A single-slot decision::

    {"EventId": "e1", "Timestamp": "2026-11-29T10:00:00.000000Z", "Version": "1",
     "_label_cost": -1.0, "_label_probability": 0.85, "_label_Action": 2, "_labelIndex": 1,
     "a": [2, 1], "p": [0.85, 0.15],
     "c": {"user": {"segment=s1": 1, "age": 31.0},
           "_multi": [{"_tag": "news", "A": {"id=news": 1}}, {"_tag": "sports", "A": {"id=sports": 1}}]}}

``a`` ranks the actions (1-based, the chosen one first) and ``p`` gives each one's probability;
``_label_cost`` is the cost VW learns, the reward negated. A multi-slot decision has
``_outcomes`` (per slot ``_a``, 0-based, ``_p`` and ``_label_cost``) and ``_slots`` instead.

Export writes each of ltrr's string features ``name=value`` as the feature ``"name=value": 1``
and each action's id as ltrr's own ``A`` namespace does, so that VW's DSJSON parser reads a
line back into the very examples ltrr learned (``tests/server/log/test_dsjson.py`` trains one
model each way and compares them). Import reads any DSJSON: keys starting with ``_`` are not
features (as in VW), strings become string features, numbers number features and ``true`` a
feature of value 1; an action's id is its ``_tag`` (else its 1-based position; a repeated tag
gets "#position").

>>> line = to_line(ExportedEvent("e1", 0.0, [("user", [("seg", "s1")])],
...                              [("x", []), ("y", [])], [[0.25, 0.75]], [1], 1.0))
>>> ev = parse_line(line)
>>> ev.event_id, ev.context, ev.action_ids, ev.action_features, ev.chosen, ev.probabilities, ev.reward
('e1', [('user', [('seg', 's1')])], ['x', 'y'], [[], []], [1], [[0.25, 0.75]], 1.0)
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from ltrr_server.bounds import MAX_ABS_FEATURE, MAX_ABS_REWARD, magnitude_problem
from ltrr_server.config import check_action_ids
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import (
    ACTION_NAMESPACE,
    SLOT_NAMESPACE,
    Namespaces,
    dumps,
    escape_name,
    escape_value,
    validate_namespaces,
)

DEFAULT_NAMESPACE = "default"
# How deep objects may nest inside the context or an action (VW's own logs nest three or four).
MAX_DEPTH = 16
_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass
class ExportedEvent:
    """A joined decision as export writes it."""

    event_id: str
    created_at: float
    context: Namespaces
    actions: list[tuple[str, Namespaces]]
    # Per slot, the probability of every action.
    probabilities: list[list[float]]
    chosen: list[int]
    reward: float


@dataclass
class ImportedEvent:
    """A decision read from a DSJSON line."""

    event_id: str
    created_at: float
    context: Namespaces
    action_ids: list[str]
    action_features: list[Namespaces]
    probabilities: list[list[float]]
    chosen: list[int]
    # None: the line logged no outcome (joined with the policy's default reward).
    reward: float | None
    learn: bool = True
    # The actions' JSON, re-encoded: the same for decisions offered the same actions (a cache key).
    actions_key: bytes = b""


# ---------------------------------------------------------------------------- export
def _features(namespaces: Namespaces) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for ns, feats in namespaces:
        target = out.setdefault(escape_name(ns), {})
        for name, value in feats:
            if isinstance(value, str):
                target[f"{escape_name(name)}={escape_value(value)}"] = 1
            else:
                target[escape_name(name)] = value
    return out


@lru_cache(maxsize=16)
def _second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso(t: float) -> str:
    """UTC, to the microsecond; each second is formatted once (a log's decisions come many to a
    second, and formatting a date took a tenth of an export)."""
    second = int(t // 1)
    return f"{_second(second)}.{min(int((t - second) * 1e6 + 0.5), 999_999):06d}Z"


def multi_json(actions: list[tuple[str, Namespaces]]) -> str:
    """The ``_multi`` list of a decision's actions, as JSON: most decisions of a policy share it,
    and an export writes it once per distinct action list (a third of the export's time)."""
    multi = []
    for action_id, feats in actions:
        obj: dict[str, Any] = {"_tag": action_id}
        obj.update(_features([(ACTION_NAMESPACE, [("id", action_id)]), *feats]))
        multi.append(obj)
    return dumps(multi)


def to_line(ev: ExportedEvent, multi: str | None = None) -> str:
    """One DSJSON line (no newline); ``multi`` is ``multi_json(ev.actions)`` when the caller has it."""
    context: dict[str, Any] = _features(ev.context)
    if multi is None:
        multi = multi_json(ev.actions)
    cost = -ev.reward
    if len(ev.chosen) == 1:
        # Written out, not through json.dumps: an export writes a million of these, and the encoder's
        # setup was a third of each. Numbers are floats and ints (finite: bounded at their source),
        # whose repr is JSON; the strings go through dumps.
        idx, probs = ev.chosen[0], ev.probabilities[0]
        ranked = [idx] + sorted((i for i in range(len(probs)) if i != idx), key=lambda i: -probs[i])
        return "".join((
            '{"EventId":', dumps(ev.event_id), ',"Timestamp":"', _iso(ev.created_at), '","Version":"1"',
            ',"_label_cost":', repr(float(cost)), ',"_label_probability":', repr(float(probs[idx])),
            ',"_label_Action":', str(idx + 1), ',"_labelIndex":', str(idx),
            ',"a":[', ",".join(str(i + 1) for i in ranked), "]",
            ',"c":', _context_text(context, multi, ""),
            ',"p":[', ",".join(repr(float(probs[i])) for i in ranked), "]}"))
    line: dict[str, Any] = {"EventId": ev.event_id, "Timestamp": _iso(ev.created_at), "Version": "1"}
    outcomes = []
    taken: set[int] = set()
    for s, (idx, probs) in enumerate(zip(ev.chosen, ev.probabilities, strict=True)):
        rest = sorted((i for i in range(len(probs)) if i != idx and i not in taken), key=lambda i: -probs[i])
        outcomes.append({"_id": f"slot_{s}", "_label_cost": cost, "_a": [idx, *rest],
                         "_p": [probs[idx]] + [probs[i] for i in rest]})
        taken.add(idx)
    slots = dumps([{"_id": f"slot_{s}", SLOT_NAMESPACE: {f"slot={s}": 1}} for s in range(len(ev.chosen))])
    # The order is VW's: its DSJSON parser reads the slots against the actions before them and the
    # outcomes against both (out of order, it crashes).
    return dumps(line)[:-1] + ',"c":' + _context_text(context, multi, slots) + ',"_outcomes":' + dumps(outcomes) + "}"


def _context_text(context: dict[str, Any], multi: str, slots: str) -> str:
    """``"c"``'s value: the context's features, then ``"_multi"`` and ``"_slots"`` spliced in as text."""
    c = dumps(context)
    return c[:-1] + ("," if len(c) > 2 else "") + '"_multi":' + multi + (',"_slots":' + slots if slots else "") + "}"


# ---------------------------------------------------------------------------- import
def _flatten(obj: dict[str, Any], ns: str, out: dict[str, list[tuple[str, str | float]]], where: str,
             depth: int = 0) -> None:
    """VW's JSON features: nested objects are namespaces of their own, keys starting with _ are not
    features, strings are string features, numbers number features, true a feature of value 1.

    A feature's field path is spelled only for an error (formatting one per feature was a fifth
    of a line's import)."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(where, f"features nested more than {MAX_DEPTH} objects deep")
    for key, value in obj.items():
        if key.startswith("_"):
            continue
        kind = type(value)
        if kind is str:
            out.setdefault(ns, []).append((key, value))
        elif kind is float or kind is int:
            _add(out, ns, key, float(value), where, key)
        elif kind is dict:
            _flatten(value, key, out, f"{where}.{key}", depth + 1)
        elif kind is list:
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _flatten(item, key, out, f"{where}.{key}[{i}]", depth + 1)
                elif isinstance(item, int | float) and not isinstance(item, bool):
                    _add(out, key, str(i), float(item), where, f"{key}[{i}]")
        elif value is True:
            _add(out, ns, key, 1.0, where, key)


def _add(out: dict[str, list[tuple[str, str | float]]], ns: str, name: str, value: float, where: str,
         key: str) -> None:
    if not -MAX_ABS_FEATURE <= value <= MAX_ABS_FEATURE:  # NaN too
        raise InvalidArgument(f"{where}.{key}", magnitude_problem(value, MAX_ABS_FEATURE) or "out of bounds")
    if value == 1.0:
        base, eq, text = name.partition("=")
        if eq and base:  # "name=value": 1, as ltrr exports a string feature
            out.setdefault(ns, []).append((base, text))
            return
    out.setdefault(ns, []).append((name, value))


def _namespaces(obj: dict[str, Any], where: str, skip: tuple[str, str] | None = None) -> Namespaces:
    out: dict[str, list[tuple[str, str | float]]] = {}
    _flatten(obj, DEFAULT_NAMESPACE, out, where)
    if skip is not None and out.get(skip[0]) == [("id", skip[1])]:
        del out[skip[0]]  # ltrr's own id feature: ltrr adds it again
    return list(out.items())


def _timestamp(line: dict[str, Any]) -> float:
    text = line.get("Timestamp")
    if not isinstance(text, str):
        return time.time()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        try:  # more than 6 digits of a second (.NET writes 7), or a Z older forms do not take
            dt = datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
        except ValueError:
            raise InvalidArgument("Timestamp", f"not an ISO 8601 time: {text!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(where, f"must be a finite number, got {value!r}")
    return float(value)


def _distribution(ranked: Any, probs: Any, n: int, base: int, where: str) -> list[float]:
    """Per action, its probability from a ranking (indices from ``base``) and its probabilities."""
    if not isinstance(ranked, list) or not isinstance(probs, list) or len(ranked) != len(probs) or not ranked:
        raise InvalidArgument(where, "needs the ranked actions and their probabilities, of one length")
    out = [0.0] * n
    top = n + base
    if all(type(a) is int and base <= a < top for a in ranked) and all(type(p) is float for p in probs):
        for a, p in zip(ranked, probs, strict=True):  # the usual line: no per-item checks left
            out[a - base] = p
        if not -math.inf < sum(probs) < math.inf:  # NaN or infinite among them
            for i, p in enumerate(probs):
                _number(p, f"{where} probability {i}")
    else:
        for i, (a, p) in enumerate(zip(ranked, probs, strict=True)):
            if type(a) is not int or not base <= a < top:
                raise InvalidArgument(f"{where}[{i}]", f"action {a!r} is not one of the {n} actions")
            out[a - base] = _number(p, f"{where} probability {i}")
    total = sum(out)
    if not 0.98 <= total <= 1.02 or min(out) < 0:
        raise InvalidArgument(where, f"probabilities must be >= 0 and sum to 1, got a sum of {total:.4g}")
    return out


def _action_ids(multi: list[dict[str, Any]]) -> list[str]:
    """Each action's ``_tag`` (else its 1-based position); a tag that repeats an earlier one (the
    decision service logged the same article twice, with other features) gets "#position"."""
    ids: list[str] = []
    seen: set[str] = set()
    for i, a in enumerate(multi):
        tag = str(a.get("_tag", i + 1))
        if tag in seen:
            tag = f"{tag}#{i + 1}"
        seen.add(tag)
        ids.append(tag)
    return ids


# (actions re-encoded, max_actions, max_features) -> their ids and checked features. Most lines of a
# log offer the same actions: reading and checking them once per distinct list took a line's import
# from about 200 to 60 us.
_ACTIONS: dict[tuple[bytes, int, int], tuple[list[str], list[Namespaces]]] = {}
_ACTIONS_KEPT = 256


def _checked(ns: Namespaces, where: str, max_features: int) -> Namespaces:
    """The same bounds as a Decide request's namespaces."""
    return validate_namespaces(
        [(name, [(f, v if isinstance(v, str) else None, v if not isinstance(v, str) else None) for f, v in feats])
         for name, feats in ns], where, max_features)


def _actions(multi: list[dict[str, Any]], max_actions: int, max_features: int
             ) -> tuple[bytes, list[str], list[Namespaces]]:
    """The actions' key (their JSON, re-encoded: 2 us where decoding their text again took 19),
    ids and features (checked)."""
    key = orjson.dumps(multi)
    hit = _ACTIONS.get((key, max_actions, max_features))
    if hit is not None:
        return key, hit[0], hit[1]
    if not all(isinstance(a, dict) for a in multi):
        raise InvalidArgument("c._multi", "missing or empty: the actions")
    if len(multi) > max_actions:
        raise InvalidArgument("c._multi", f"{len(multi)} actions, more than limits.max_actions={max_actions}")
    ids = _action_ids(multi)
    check_action_ids(ids, "c._multi")
    features = [_checked(_namespaces(a, f"c._multi[{i}]", (ACTION_NAMESPACE, escape_value(ids[i]))),
                         f"c._multi[{i}]", max_features) for i, a in enumerate(multi)]
    if len(_ACTIONS) >= _ACTIONS_KEPT:
        _ACTIONS.clear()
    _ACTIONS[(key, max_actions, max_features)] = (ids, features)
    return key, ids, features


def parse_line(text: str, max_actions: int = 256, max_features: int = 1024) -> ImportedEvent:
    """One DSJSON line as a decision, its features within a Decide request's bounds; InvalidArgument
    names what is wrong with it."""
    try:  # orjson: a third of the standard library's time; it refuses nesting past 1,024
        line = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg:
            raise InvalidArgument("line", "nested too deeply to read (over 1,024 levels)") from None
        raise InvalidArgument("line", f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(line, dict):
        raise InvalidArgument("line", "not a JSON object")
    event_id = line.get("EventId")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidArgument("EventId", "missing or not a string")
    if line.get("pdrop"):
        raise InvalidArgument("pdrop", "events dropped at logging (pdrop > 0) would bias every estimate")
    c = line.get("c")
    if not isinstance(c, dict):
        raise InvalidArgument("c", "missing: the context and its _multi actions")
    multi = c.get("_multi")
    if not isinstance(multi, list) or not multi:
        raise InvalidArgument("c._multi", "missing or empty: the actions")
    key, ids, features = _actions(multi, max_actions, max_features)
    n = len(multi)
    if "_outcomes" in line:
        outcomes = line["_outcomes"]
        if not isinstance(outcomes, list) or not outcomes or not all(isinstance(o, dict) for o in outcomes):
            raise InvalidArgument("_outcomes", "must be a list of slot outcomes")
        probabilities = [_distribution(o.get("_a"), o.get("_p"), n, 0, f"_outcomes[{s}]._a")
                         for s, o in enumerate(outcomes)]
        chosen = [int(o["_a"][0]) for o in outcomes]
        if len(set(chosen)) != len(chosen):
            raise InvalidArgument("_outcomes", "two slots chose the same action")
        costs = [_number(o["_label_cost"], f"_outcomes[{s}]._label_cost")
                 for s, o in enumerate(outcomes) if "_label_cost" in o]
        reward = -sum(costs) if costs else None
    else:
        ranked: Any = line.get("a")
        probs = line.get("p")
        if probs is None and isinstance(ranked, list) and "_label_probability" in line:
            # Only the chosen action's probability: the rest spread evenly (no estimator reads them).
            p = _number(line["_label_probability"], "_label_probability")
            probs = [p] + [(1 - p) / max(1, len(ranked) - 1)] * (len(ranked) - 1)
        probabilities = [_distribution(ranked, probs, n, 1, "a")]
        index = line.get("_labelIndex", ranked[0] - 1)  # _distribution checked the ranking
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise InvalidArgument("_labelIndex", f"must be an action index below {n}, got {index!r}")
        chosen = [index]
        reward = -_number(line["_label_cost"], "_label_cost") if "_label_cost" in line else None
    for s, (idx, probs_s) in enumerate(zip(chosen, probabilities, strict=True)):
        if not probs_s[idx] > 0:
            raise InvalidArgument(f"slot {s}", "the chosen action has probability 0")
    if reward is not None and (problem := magnitude_problem(reward, MAX_ABS_REWARD)):
        raise InvalidArgument("_label_cost", problem)
    return ImportedEvent(
        event_id=event_id, created_at=_timestamp(line), context=_checked(_namespaces(c, "c"), "c", max_features),
        action_ids=ids, action_features=features, probabilities=probabilities, chosen=chosen, reward=reward,
        learn=not line.get("_skipLearn", False), actions_key=key)
