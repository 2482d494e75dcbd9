"""Namespaced features: validation, and the Vowpal Wabbit text lines built from them.

Requests carry features as namespaces of (name, string | number). Here they become
VW text, escaped so that no caller-supplied byte can change the line's structure.

>>> ns = [("user", [("segment", "sports fan"), ("age", 31.0)])]
>>> shared_line(ns)
'shared |user segment=sports_fan age:31.0'
>>> shared_line([])
'shared |'
>>> action_line("song:1", [])
'|A id=song_1'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from ltrr_server.bounds import MAX_ABS_FEATURE, NAME_CHARS, magnitude_problem
from ltrr_server.errors import InvalidArgument

FeatureValue = str | float
Namespaces = list[tuple[str, list[tuple[str, FeatureValue]]]]

# Characters with a meaning in VW's text format; replaced so they stay data.
_SPECIAL = str.maketrans({" ": "_", "\t": "_", "\n": "_", "\r": "_", "|": "_", ":": "_"})
_SPECIAL_NAME = str.maketrans({" ": "_", "\t": "_", "\n": "_", "\r": "_", "|": "_", ":": "_", "=": "_"})

ACTION_NAMESPACE = "A"
SLOT_NAMESPACE = "S"
MAX_NAME_LENGTH = NAME_CHARS
_TOO_LONG = f"longer than {MAX_NAME_LENGTH} characters"


def escape_name(name: str) -> str:
    # Most names and values are plain words: ``isalnum`` is true of no special character, and it
    # costs a twentieth of ``translate``, which looks up every distinct character in the table.
    return name if name.isalnum() else name.translate(_SPECIAL_NAME)


def escape_value(value: str) -> str:
    return value if value.isalnum() else value.translate(_SPECIAL)


def _namespace_text(namespaces: Namespaces) -> str:
    parts: list[str] = []
    for ns_name, features in namespaces:
        items = [f"|{escape_name(ns_name)}"]
        for fname, value in features:
            if isinstance(value, str):
                items.append(f"{escape_name(fname)}={escape_value(value)}")
            else:
                items.append(f"{escape_name(fname)}:{value!r}")
        parts.append(" ".join(items))
    return " ".join(parts)


def shared_line(namespaces: Namespaces, prefix: str = "shared") -> str:
    """The VW shared-example line for a context."""
    # A bare "shared" is not parsed as a shared example: keep an (empty) namespace.
    return f"{prefix} {_namespace_text(namespaces) or '|'}"


def action_line(action_id: str, namespaces: Namespaces, prefix: str = "") -> str:
    """The VW line for one action: its id as feature ``id`` in namespace ``A``, then its features."""
    text = _namespace_text(namespaces)
    head = f"{prefix} |{ACTION_NAMESPACE} id={escape_value(action_id)}".lstrip()
    return f"{head} {text}" if text else head


# VW's coin betting (``--coin``) divides by the square of the largest value a weight has seen; a
# value whose square is below float32's smallest normal number (|v| under 1.1e-19, where crossed
# values are products) gives NaN probabilities within a few events and the model never recovers
# (measured with 5 actions and ``-q :: --cubic ::A``: 3e-10, crossed with itself, NaN within 2-6
# events; 1e-9 finite over 3,000). At or above 1e-6, a product of three values (the longest
# interaction) stays at or above 1e-18. AdaGrad needs no floor: it learned a feature scaled down
# to 1e-10 exactly as at 1, and so did coin down to 1e-8.
COIN_MIN_ABS_VALUE = 1e-6
# A number in exponent form after ':', which in a line built here is only ever a feature's value
# (names and values are escaped: no ':' of theirs is left). ``repr`` writes every |v| < 1e-4 so.
_EXPONENT_VALUE = re.compile(r":(-?\d(?:\.\d+)?e-\d+)")


def _zero_if_tiny(match: re.Match[str]) -> str:
    return ":0" if abs(float(match.group(1))) < COIN_MIN_ABS_VALUE else match.group(0)


def without_tiny_values(line: str) -> str:
    """``line`` with every numeric feature value smaller than ``COIN_MIN_ABS_VALUE`` in magnitude
    written as 0, which VW drops; a label (before the first ``|``) is left as it is.

    >>> without_tiny_values("0:-1.0:1e-07 |u a:3e-10 b:2.5e-06 c=1e-9 d:-1e-12 |A id=x")
    '0:-1.0:1e-07 |u a:0 b:2.5e-06 c=1e-9 d:0 |A id=x'
    """
    cut = line.find("|")
    if cut < 0 or "e-" not in line[cut:]:
        return line
    return line[:cut] + _EXPONENT_VALUE.sub(_zero_if_tiny, line[cut:])


def validate_namespaces(
    pairs: Iterable[tuple[str, Iterable[tuple[str, str | None, float | None]]]],
    field: str,
    max_features: int,
) -> Namespaces:
    """Checks namespaces given as (name, [(feature, str or None, number or None)]).

    Raises InvalidArgument naming the exact field (``context[1].features[0].num``).
    """
    out: Namespaces = []
    count = 0
    # The field paths are spelled only for an error: formatting them for every feature cost
    # more than checking it.
    for i, (ns_name, features) in enumerate(pairs):
        if i >= max_features:
            raise InvalidArgument(field, f"more than {max_features} namespaces (limits.max_features)")
        if not ns_name:
            raise InvalidArgument(f"{field}[{i}].name", "namespace name is empty")
        if len(ns_name) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"{field}[{i}].name", _TOO_LONG)
        feats: list[tuple[str, FeatureValue]] = []
        for j, (fname, sval, nval) in enumerate(features):
            if not fname:
                raise InvalidArgument(f"{field}[{i}].features[{j}].name", "feature name is empty")
            if len(fname) > MAX_NAME_LENGTH:
                raise InvalidArgument(f"{field}[{i}].features[{j}].name", _TOO_LONG)
            if sval is not None:
                if len(sval) > MAX_NAME_LENGTH:
                    raise InvalidArgument(f"{field}[{i}].features[{j}].str", _TOO_LONG)
                feats.append((fname, sval))
            elif nval is not None:
                if not abs(nval) <= MAX_ABS_FEATURE:  # NaN compares false
                    raise InvalidArgument(f"{field}[{i}].features[{j}].num", magnitude_problem(nval, MAX_ABS_FEATURE))
                feats.append((fname, float(nval)))
            else:
                raise InvalidArgument(f"{field}[{i}].features[{j}].value", "feature has neither str nor num")
            count += 1
            if count > max_features:
                raise InvalidArgument(field, f"more than {max_features} features (limits.max_features)")
        out.append((ns_name, feats))
    return out


def namespaces_to_json(namespaces: Namespaces) -> list[list[object]]:
    return [[name, [[f, v] for f, v in feats]] for name, feats in namespaces]


def actions_to_json(actions: Iterable[tuple[str, Namespaces]]) -> str:
    """A decision's actions as the log keeps them: ``[[id, namespaces], ...]`` (``actions_of`` in
    ``log/events.py`` reads them back)."""
    return dumps([[action_id, namespaces_to_json(feats)] for action_id, feats in actions])


def namespaces_from_json(data: Sequence[Sequence[object]]) -> Namespaces:
    out: Namespaces = []
    for name, feats in data:
        assert isinstance(name, str) and isinstance(feats, list)
        out.append((name, [(str(f), v if isinstance(v, str) else float(v)) for f, v in feats]))
    return out


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))
