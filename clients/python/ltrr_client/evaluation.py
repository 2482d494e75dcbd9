"""The command line's words for counterfactual evaluation and tuning, as request messages.

>>> parse_target("action:song-1").action
'song-1'
>>> parse_target("snapshot:12").snapshot_id
12
>>> parse_target("live").live, parse_target("uniform").uniform, parse_target("actions").each_action
(True, True, True)
>>> from ltrr.v1 import admin_pb2
>>> c = parse_candidate("exploration=epsilon,epsilon=0.1,learning_rate=0.2,interactions=::A+uA",
...                     admin_pb2.PolicySpec(name="p", learning_rate=0.5))
>>> c.exploration == admin_pb2.EXPLORATION_EPSILON, c.epsilon, c.learning_rate, list(c.interactions)
(True, 0.1, 0.2, ['::A', 'uA'])
>>> parse_time("2026-11-28T12:00:00Z", now=0.0)
1795867200000
>>> parse_time("90m", now=10_000.0)
4600000
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ltrr.v1 import admin_pb2
from ltrr_client.spec_text import enum_text, set_field

_SIMPLE = {"live": "live", "uniform": "uniform", "actions": "each_action"}
# An estimate on an effective sample size under this is flagged (as tune sets such a candidate
# aside: ltrr_server.core.tuning.MIN_ESS).
FEW_EVENTS = 100.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TARGET_HELP = ("live | uniform | actions (each of the policy's actions) | action:ID | snapshot:ID | table:FILE "
               "(JSON {action: weight}, or {\"feature\": \"ns.name\", \"by_value\": {value: {action: weight}}, "
               "\"default\": {...}}) | candidate:FIELD=VALUE,... (the policy's spec with these changes)")


def parse_duration(text: str) -> float | None:
    """Seconds in "90s", "15m", "24h", "7d"; None when ``text`` is not such a duration."""
    m = _DURATION.match(text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_time(text: str, now: float | None = None) -> int:
    """Milliseconds since 1970 from an ISO 8601 time (UTC unless it says otherwise) or a duration
    ago ("90m", "24h", "7d")."""
    now = time.time() if now is None else now
    ago = parse_duration(text)
    if ago is not None:
        return int((now - ago) * 1000)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or a duration such as 24h: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def table_target(data: Any, source: str) -> admin_pb2.TableTarget:
    """A table target from its JSON form (see TARGET_HELP)."""
    def weights(obj: Any, where: str) -> list[admin_pb2.ActionWeight]:
        if not isinstance(obj, dict) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                for v in obj.values()):
            raise ValueError(f"{source}: {where} must map action ids to numbers")
        return [admin_pb2.ActionWeight(action=str(k), weight=float(v)) for k, v in obj.items()]

    if isinstance(data, dict) and "feature" in data:
        by_value = data.get("by_value", {})
        if not isinstance(by_value, dict):
            raise ValueError(f"{source}: by_value must map feature values to tables")
        return admin_pb2.TableTarget(
            feature=str(data["feature"]), default_weights=weights(data.get("default", {}), "default"),
            by_value=[admin_pb2.FeatureTable(value=str(k), weights=weights(v, f"by_value[{k!r}]"))
                      for k, v in by_value.items()])
    return admin_pb2.TableTarget(default_weights=weights(data, "the table"))


def parse_candidate(text: str, base: admin_pb2.PolicySpec) -> admin_pb2.PolicySpec:
    """``base`` with FIELD=VALUE changes (``spec_text.set_field``: enums by name, interactions
    joined by '+')."""
    spec = admin_pb2.PolicySpec()
    spec.CopyFrom(base)
    for part in filter(None, text.split(",")):
        if (name := part.partition("=")[0].strip()) in ("actions", "name", "description", "mode", "retention_days"):
            raise ValueError(f"candidate: {name} is the policy's, not a learning setting")
        try:
            set_field(spec, part)
        except ValueError as exc:
            raise ValueError(f"candidate: {exc}") from None
    return spec


def parse_target(text: str, base: admin_pb2.PolicySpec | None = None) -> admin_pb2.EvaluationTarget:
    """One ``--target`` (see TARGET_HELP). ``base`` is the policy's spec, for candidates."""
    if text in _SIMPLE:
        target = admin_pb2.EvaluationTarget()
        setattr(target, _SIMPLE[text], True)
        return target
    kind, colon, rest = text.partition(":")
    if not colon:
        raise ValueError(f"unknown target {text!r}: {TARGET_HELP}")
    if kind == "action":
        return admin_pb2.EvaluationTarget(action=rest)
    if kind == "snapshot":
        if not rest.isdigit():
            raise ValueError(f"snapshot:ID needs a number, got {rest!r}")
        return admin_pb2.EvaluationTarget(snapshot_id=int(rest))
    if kind == "table":
        try:
            data = json.loads(Path(rest).read_text(encoding="utf-8-sig"))  # with a byte order mark or without
        except (OSError, ValueError) as exc:  # and not JSON, or not UTF-8
            raise ValueError(f"table {rest}: {exc}") from None
        return admin_pb2.EvaluationTarget(name=f"table:{Path(rest).name}", table=table_target(data, rest))
    if kind == "candidate":
        return admin_pb2.EvaluationTarget(name=text, candidate=parse_candidate(rest, base or admin_pb2.PolicySpec()))
    raise ValueError(f"unknown target {text!r}: {TARGET_HELP}")


def target_name(text: str) -> str:
    """The name the server gives the result of ``--target text`` (what ``--baseline`` names).

    >>> target_name("live"), target_name("table:/tmp/by-segment.json"), target_name("candidate:learning_rate=1")
    ('live', 'table:by-segment.json', 'candidate:learning_rate=1')
    """
    kind, _, rest = text.partition(":")
    return f"table:{Path(rest).name}" if kind == "table" else text


def _interval(e: admin_pb2.Estimate, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{e.value:{sign}9.4f} [{e.lower:{sign}.4f}, {e.upper:{sign}.4f}]"


def evaluation_table(result: admin_pb2.PolicyEvaluation) -> str:
    """The result as a text table: one row per target and slot.

    >>> r = admin_pb2.PolicyEvaluation(policy="p", events=3003)
    >>> slot = r.targets.add(name="live").slots.add(effective_sample_size=2.0, support=1.0)
    >>> slot.snips.value = 0.98
    >>> table = evaluation_table(r).splitlines()
    >>> table[2].split()[-2:], table[-1].startswith("ess!: the estimate rests on fewer than 100 events")
    (['2!', '1.000'], True)
    """
    head = (f"{result.events} joined events of {result.policy}, "
            f"{_when(result.first_ms)} .. {_when(result.last_ms)}; logged policy's mean reward "
            f"{_interval(result.logged)}")
    paired = any(s.HasField("versus_baseline") for t in result.targets for s in t.slots)
    # Only a log that did not explore has the column (and its note): most never do.
    unlogged = any(s.unlogged_share > 0 for t in result.targets for s in t.slots)
    rows = [head, f"{'target':<28} {'slot':>4} {'estimator':<6} {'value [95% interval]':>34} {'ess':>9} "
                  f"{'support':>8}" + (f" {'unlogged':>8}" if unlogged else "")
                  + (f" {'minus the baseline, paired':>34}" if paired else "")]
    for t in result.targets:
        if t.problem:
            rows.append(f"{t.name[:28]:<28} not estimated: {t.problem}")
        for s in t.slots:
            for name in ("ips", "snips", "dr"):
                if s.HasField(name):
                    versus = f" {_interval(getattr(s.versus_baseline, name), signed=True):>34}" if paired else ""
                    hole = f" {s.unlogged_share:>8.3f}" if unlogged else ""
                    few = "!" if s.effective_sample_size < FEW_EVENTS else " "
                    rows.append(f"{t.name[:28]:<28} {s.slot:>4} {name:<6} {_interval(getattr(s, name)):>34} "
                                f"{s.effective_sample_size:>8.0f}{few} {s.support:>8.3f}{hole}{versus}")
    if any(s.effective_sample_size < FEW_EVENTS for t in result.targets for s in t.slots):
        rows.append(f"ess!: the estimate rests on fewer than {FEW_EVENTS:.0f} events, as its importance weights count "
                    f"them: its interval is not to be trusted, however narrow.")
    if unlogged:
        rows.append("unlogged: the share of a target's choices on actions the logged decisions gave probability 0 "
                    "(they did not explore). No estimate sees what those choices would have earned: where it is "
                    "above 0, the figures leave them out.")
    return "\n".join(rows)


def tune_table(result: admin_pb2.TuneResult) -> str:
    """The result as a text table: one row per candidate, best estimate first.

    >>> r = admin_pb2.TuneResult(policy="p", events=100, reason="the live configuration stays")
    >>> _ = r.candidates.add(spec=admin_pb2.PolicySpec(optimizer=admin_pb2.OPTIMIZER_COIN), problem="its model ...")
    >>> row = tune_table(r).splitlines()[2]
    >>> row.split()[1:3], row.endswith("optimizer=coin,cb_type=unspecified,interactions= (its model ...)")
    (['not', 'estimated'], True)
    """
    rows = [f"{result.events} joined events of {result.policy}; live policy's mean reward {_interval(result.logged)}",
            f"{'#':>2} {'SNIPS [95% interval]':>34} {'minus the live configuration':>34} {'ess':>7}  configuration"]
    for i, c in enumerate(result.candidates):
        figures = (f"{'not estimated':>34} {'':>34} {'':>7}" if c.problem else
                   f"{_interval(c.estimate):>34} {_interval(c.versus_live, signed=True):>34} "
                   f"{c.effective_sample_size:>7.0f}")
        note = (f" ({c.problem})" if c.problem else
                f" ({c.unlogged_share:.0%} of its choices unlogged)" if c.unlogged_share >= 0.005 else "")
        rows.append(f"{i + 1:>2} {figures}  {describe(c.spec)}{note}")
    rows.append(f"recommended: {describe(result.recommended)}")
    rows.append(("applied: " if result.applied else "not applied: ") + result.reason)
    return "\n".join(rows)


def describe(spec: admin_pb2.PolicySpec) -> str:
    """The learning settings of a spec, as FIELD=VALUE (the form ``candidate:`` takes)."""
    e = enum_text(spec, "exploration")
    parts = [f"exploration={e}"]
    if e == "squarecb":
        parts.append(f"squarecb_gamma_scale={spec.squarecb_gamma_scale:g}")
    elif e in ("epsilon", "bag", "cover", "rnd"):
        parts.append(f"epsilon={spec.epsilon:g}")
    if spec.optimizer == admin_pb2.OPTIMIZER_COIN:
        parts.append("optimizer=coin")  # it sets its own steps: no learning rate or decay
    else:
        parts += [f"learning_rate={spec.learning_rate:g}", f"power_t={spec.power_t:g}"]
    parts += [f"cb_type={enum_text(spec, 'cb_type')}", "interactions=" + "+".join(spec.interactions)]
    if spec.reward_scale not in (0.0, 1.0):  # unset or 1: rewards learned as they come
        parts.append(f"reward_scale={spec.reward_scale:g}")
    return ",".join(parts)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
