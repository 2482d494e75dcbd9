"""A policy spec's fields as the command line writes them: FIELD=VALUE, enums by name.

One parser for ``candidate:FIELD=VALUE,...`` (evaluation and tuning) and ``ltrr policies update
NAME FIELD=VALUE ...``: enums by their short lower-case name, lists joined by '+'.

>>> spec = admin_pb2.PolicySpec()
>>> [set_field(spec, part) for part in ("mode=online", "actions=news+sports", "interactions=::A+uA")]
['mode', 'actions', 'interactions']
>>> spec.mode == admin_pb2.POLICY_MODE_ONLINE, [a.id for a in spec.actions], list(spec.interactions)
(True, ['news', 'sports'], ['::A', 'uA'])
>>> set_field(spec, "learning_rate=fast")
Traceback (most recent call last):
...
ValueError: learning_rate must be a number, got 'fast'
"""

from __future__ import annotations

from typing import Any

from ltrr.v1 import admin_pb2, common_pb2

_ENUMS: dict[str, tuple[str, Any]] = {
    "kind": ("POLICY_KIND_", admin_pb2.PolicyKind), "exploration": ("EXPLORATION_", admin_pb2.Exploration),
    "aggregation": ("AGGREGATION_", admin_pb2.Aggregation), "cb_type": ("CB_TYPE_", admin_pb2.CbType),
    "optimizer": ("OPTIMIZER_", admin_pb2.Optimizer), "mode": ("POLICY_MODE_", admin_pb2.PolicyMode)}
# By name, as a plain dict: the descriptor's own map reads a name only up to a NUL ("name\x00").
_FIELDS = {f.name: f for f in admin_pb2.PolicySpec.DESCRIPTOR.fields}


def enum_text(spec: admin_pb2.PolicySpec, name: str) -> str:
    """An enum field of a spec by the name ``set_field`` takes (its inverse).

    >>> enum_text(admin_pb2.PolicySpec(cb_type=admin_pb2.CB_TYPE_MTR), "cb_type")
    'mtr'
    """
    prefix, enum = _ENUMS[name]
    return str(enum.Name(getattr(spec, name))).removeprefix(prefix).lower()


def set_field(spec: admin_pb2.PolicySpec, part: str) -> str:
    """Sets one ``FIELD=VALUE`` on ``spec``; returns the field's name."""
    name, eq, value = part.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or name not in _FIELDS:
        raise ValueError(f"{part!r} is not FIELD=VALUE with a PolicySpec field ({', '.join(_FIELDS)})")
    if name in _ENUMS:
        prefix, enum = _ENUMS[name]
        names = [n.removeprefix(prefix).lower() for n in enum.keys() if not n.endswith("_UNSPECIFIED")]
        if value.lower() not in names:
            raise ValueError(f"unknown {name} {value!r} (one of {', '.join(names)})")
        setattr(spec, name, enum.Value(prefix + value.upper()))
    elif name == "interactions":
        del spec.interactions[:]
        spec.interactions.extend(filter(None, value.split("+")))
    elif name == "actions":
        del spec.actions[:]
        spec.actions.extend(common_pb2.Action(id=a) for a in filter(None, value.split("+")))
    elif _FIELDS[name].cpp_type == _FIELDS[name].CPPTYPE_STRING:
        setattr(spec, name, value)
    else:
        field = _FIELDS[name]
        try:
            number = float(value) if field.cpp_type == field.CPPTYPE_DOUBLE else int(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        setattr(spec, name, number)
    return name
