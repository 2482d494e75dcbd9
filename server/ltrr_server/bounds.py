"""Every field of every request message, bounded in one place.

A search frontend can send anything: ``BOUNDS`` says, for each field of each request message
(and of the messages inside them), how long, how many or how large it may be. The code that
reads a field checks it against the number here (or the ``Limits`` setting named here) before
any work, and answers INVALID_ARGUMENT naming the field. Two tests hold this together:

- ``tests/server/api/test_bounds.py::test_every_request_field_has_a_bound`` walks the request
  messages of every RPC in the protos: a field added without a bound fails CI;
- ``test_bad_requests_get_invalid_argument_naming_the_field`` sends, for every bound here, a
  request just past it (one character, one item, one unit too many; NaN; an unknown enum value)
  and expects INVALID_ARGUMENT naming the field, with the server healthy after each.

The gRPC message size limit (``limits.max_request_bytes``) bounds a request as a whole.

>>> BOUNDS["ltrr.v1.RewardEvent.event_id"]
Text(max_chars=64)
>>> from ltrr_server.config import Settings
>>> resolve("limits.max_actions", Settings())
256
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Characters of ids that name things the server stores (event ids, policy and model names).
ID_CHARS = 64
# Characters of a caller's reward id and request id (echoed back).
REWARD_ID_CHARS = 128
REQUEST_ID_CHARS = 128
# Characters of action ids, item ids, namespace and feature names, and string feature values.
NAME_CHARS = 256
# Engaged items one reward may name.
ENGAGED_ITEMS = 1000
# XmrPredict's k and beam size, Autocomplete's k.
MAX_K = 1000
MAX_COMPLETIONS = 100
# Results on one Search page.
MAX_PAGE_SIZE = 100
# Magnitudes of the numbers a policy learns from. VW keeps its state in 32-bit floats and its
# adaptive updates sum squares of feature times cost: past about 1e15 for that product a policy's
# weights overflow to inf or NaN, and it never learns again (measured: one reward of 1e10 with a
# feature of 1e9; 3,000 rewards of 1e3 with features of 1e15; one reward of 1e19 alone). Features
# up to 1e9 (a Unix time, a price in cents) with rewards up to 1e6 kept every weight finite over
# 100k events; learning rates and softmax lambdas up to 1e30 did not overflow.
MAX_ABS_FEATURE = 1e9
MAX_ABS_REWARD = 1e6
# API keys: a key's id, name and mapped certificate subject; its roles; each of its quotas; the
# entries one ListAudit answers.
KEY_ID_CHARS = 32
KEY_NAME_CHARS = 128
SUBJECT_CHARS = 256
KEY_ROLES = 3
MAX_QUOTA = 10_000_000
MAX_AUDIT_ENTRIES = 10_000
# A query embedding is kept as 32-bit floats: a larger number would be infinite.
F32_MAX = 3.4028234663852886e38


def magnitude_problem(value: float, limit: float) -> str:
    """What is wrong with a number that must be finite and at most ``limit`` in magnitude, or ''.

    >>> magnitude_problem(1e10, MAX_ABS_REWARD)
    'must be within +-1e+06, got 1e+10'
    >>> magnitude_problem(float("nan"), MAX_ABS_REWARD)
    'must be finite, got nan'
    >>> magnitude_problem(1.0000001e9, MAX_ABS_FEATURE)
    'must be within +-1e+09, got 1000000100'
    >>> magnitude_problem(-2.5, MAX_ABS_REWARD)
    ''
    """
    if not math.isfinite(value):
        return f"must be finite, got {value}"
    if abs(value) > limit:
        # Ten digits: a value just past the bound must not print as the bound itself.
        return f"must be within +-{limit:g}, got {value:.10g}"
    return ""

# Policy specs; the paths an UpdatePolicy's mask may name (PolicySpec's fields, with room to grow).
SPEC_FIELDS = 64
DESCRIPTION_CHARS = 1024
INTERACTIONS = 64
MAX_SLOTS = 64
# A policy's retention of its event log, in days (100 years; 0: forever).
MAX_RETENTION_DAYS = 36_500
# Retrieve: entries of a fixed plan (one per strategy), a budget, dimensions of a query embedding.
PLAN_ENTRIES = 64
MAX_BUDGET = 10_000
EMBEDDING_DIMS = 4096
# Evaluation and import: a table target's feature ("namespace.feature"), its per-value tables, a
# time in milliseconds since 1970 (year 33658), one DSJSON line (Personalizer's carry a few KB;
# VW's fixtures up to 15 KB).
FEATURE_PATH_CHARS = 2 * NAME_CHARS + 1
TABLE_VALUES = 10_000
MAX_TIME_MS = 10**15
DSJSON_LINE_CHARS = 1_000_000

# A bound is a number, or the name of the setting that holds it ("limits.max_actions").
Amount = int | str


@dataclass(frozen=True)
class Text:
    """A string of at most ``max_chars`` characters."""

    max_chars: Amount


@dataclass(frozen=True)
class Items:
    """A repeated field (or map) of at most ``max_items`` entries; each entry is bounded by the
    entry's own bound (``each``) or its message's fields."""

    max_items: Amount
    each: Text | Number | Enum | None = None


@dataclass(frozen=True)
class Number:
    """A number in [lo, hi]; doubles must be finite."""

    lo: float
    hi: float


@dataclass(frozen=True)
class Enum:
    """One of the enum's declared values."""


@dataclass(frozen=True)
class Nested:
    """A message field: bounded by the fields of its message."""


@dataclass(frozen=True)
class Free:
    """A field its type bounds (a bool, a uint32 whose every value is fine); ``why`` says so."""

    why: str


Bound = Text | Items | Number | Enum | Nested | Free

_FINITE = float("inf")
_TIME = Number(0, MAX_TIME_MS)
_UINT32 = 2**32 - 1

_NAMESPACES = Items("limits.max_features")
_ID = Text(ID_CHARS)

BOUNDS: dict[str, Bound] = {
    # common
    "ltrr.v1.Namespace.name": Text(NAME_CHARS),
    "ltrr.v1.Namespace.features": Items("limits.max_features"),
    "ltrr.v1.Feature.name": Text(NAME_CHARS),
    "ltrr.v1.Feature.str": Text(NAME_CHARS),
    "ltrr.v1.Feature.num": Number(-MAX_ABS_FEATURE, MAX_ABS_FEATURE),
    "ltrr.v1.Action.id": Text(NAME_CHARS),
    "ltrr.v1.Action.features": _NAMESPACES,
    # decisions
    "ltrr.v1.DecideRequest.policy": _ID,
    "ltrr.v1.DecideRequest.context": _NAMESPACES,
    "ltrr.v1.DecideRequest.actions": Items("limits.max_actions"),
    "ltrr.v1.DecideRequest.event_id": _ID,
    "ltrr.v1.DecideRequest.slots": Number(0, MAX_SLOTS),
    "ltrr.v1.DecideRequest.request_id": Text(REQUEST_ID_CHARS),
    "ltrr.v1.DecideRequest.baseline_action_id": Text(NAME_CHARS),
    # feedback
    "ltrr.v1.RewardEvent.event_id": _ID,
    "ltrr.v1.RewardEvent.reward_id": Text(REWARD_ID_CHARS),
    "ltrr.v1.RewardEvent.value": Number(-MAX_ABS_REWARD, MAX_ABS_REWARD),
    "ltrr.v1.RewardEvent.engaged_item_ids": Items(ENGAGED_ITEMS, each=Text(NAME_CHARS)),
    "ltrr.v1.RewardEvent.oracle_best_value": Number(-_FINITE, _FINITE),
    "ltrr.v1.RewardEvent.oracle_chosen_value": Number(-_FINITE, _FINITE),
    "ltrr.v1.RewardBatch.events": Items("limits.max_reward_batch"),
    # retrieval
    "ltrr.v1.RetrieveRequest.policy": _ID,
    "ltrr.v1.RetrieveRequest.query": Text("retrieval.max_query_chars"),
    "ltrr.v1.RetrieveRequest.context": _NAMESPACES,
    "ltrr.v1.RetrieveRequest.query_embedding": Items(EMBEDDING_DIMS, each=Number(-F32_MAX, F32_MAX)),
    "ltrr.v1.RetrieveRequest.event_id": _ID,
    "ltrr.v1.RetrieveRequest.request_id": Text(REQUEST_ID_CHARS),
    "ltrr.v1.RetrieveRequest.fixed_plan": Items(PLAN_ENTRIES),
    "ltrr.v1.RetrieveRequest.FixedPlanEntry.key": _ID,
    "ltrr.v1.RetrieveRequest.FixedPlanEntry.value": Number(0, MAX_BUDGET),
    "ltrr.v1.RetrieveRequest.limit": Free("a limit past the candidates returns them all"),
    "ltrr.v1.SearchRequest.policy": _ID,
    "ltrr.v1.SearchRequest.query": Text("retrieval.max_query_chars"),
    "ltrr.v1.SearchRequest.context": _NAMESPACES,
    "ltrr.v1.SearchRequest.user_id": Text(NAME_CHARS),
    "ltrr.v1.SearchRequest.page_size": Number(0, MAX_PAGE_SIZE),
    "ltrr.v1.SearchRequest.query_embedding": Items(EMBEDDING_DIMS, each=Number(-F32_MAX, F32_MAX)),
    "ltrr.v1.SearchRequest.event_id": _ID,
    "ltrr.v1.SearchRequest.request_id": Text(REQUEST_ID_CHARS),
    "ltrr.v1.SearchRequest.fixed_plan": Items(PLAN_ENTRIES),
    "ltrr.v1.SearchRequest.FixedPlanEntry.key": _ID,
    "ltrr.v1.SearchRequest.FixedPlanEntry.value": Number(0, MAX_BUDGET),
    "ltrr.v1.SearchRequest.order": Enum(),
    "ltrr.v1.SearchRequest.model": _ID,
    # models
    "ltrr.v1.XmrPredictRequest.model": _ID,
    "ltrr.v1.XmrPredictRequest.queries": Items("limits.max_predict_queries", each=Text("limits.max_query_chars")),
    "ltrr.v1.XmrPredictRequest.k": Number(0, MAX_K),
    "ltrr.v1.XmrPredictRequest.beam_size": Number(0, MAX_K),
    "ltrr.v1.AutocompleteRequest.model": _ID,
    "ltrr.v1.AutocompleteRequest.prefix": Text("limits.max_prefix_chars"),
    "ltrr.v1.AutocompleteRequest.previous_queries": Items("limits.max_previous_queries",
                                                          each=Text("limits.max_query_chars")),
    "ltrr.v1.AutocompleteRequest.session_id": _ID,
    "ltrr.v1.AutocompleteRequest.k": Number(0, MAX_COMPLETIONS),
    "ltrr.v1.RecordQueryRequest.session_id": _ID,
    "ltrr.v1.RecordQueryRequest.query": Text("limits.max_query_chars"),
    "ltrr.v1.ListModelsRequest.name": _ID,
    "ltrr.v1.PromoteModelRequest.name": _ID,
    "ltrr.v1.PromoteModelRequest.version": Free("a version that does not exist is NOT_FOUND"),
    "ltrr.v1.PromoteModelRequest.force": Free("a bool"),
    # admin
    "ltrr.v1.CreatePolicyRequest.spec": Nested(),
    "ltrr.v1.UpdatePolicyRequest.spec": Nested(),
    "ltrr.v1.UpdatePolicyRequest.update_mask": Nested(),
    "google.protobuf.FieldMask.paths": Items(SPEC_FIELDS, each=Text(ID_CHARS)),
    "ltrr.v1.GetPolicyRequest.name": _ID,
    "ltrr.v1.SnapshotPolicyRequest.name": _ID,
    "ltrr.v1.GetPolicyStatsRequest.name": _ID,
    "ltrr.v1.PolicySpec.name": _ID,
    "ltrr.v1.PolicySpec.kind": Enum(),
    "ltrr.v1.PolicySpec.exploration": Enum(),
    "ltrr.v1.PolicySpec.epsilon": Number(0, 1),
    "ltrr.v1.PolicySpec.softmax_lambda": Number(-_FINITE, _FINITE),
    "ltrr.v1.PolicySpec.ensemble_size": Number(0, 64),
    "ltrr.v1.PolicySpec.squarecb_gamma_scale": Number(0, _FINITE),
    "ltrr.v1.PolicySpec.interactions": Items(INTERACTIONS, each=Text(3)),
    "ltrr.v1.PolicySpec.actions": Items("limits.max_actions"),
    "ltrr.v1.PolicySpec.join_window_seconds": Number(0, 7 * 24 * 3600),
    "ltrr.v1.PolicySpec.default_reward": Number(-MAX_ABS_REWARD, MAX_ABS_REWARD),
    "ltrr.v1.PolicySpec.aggregation": Enum(),
    "ltrr.v1.PolicySpec.slots": Number(0, MAX_SLOTS),
    "ltrr.v1.PolicySpec.description": Text(DESCRIPTION_CHARS),
    "ltrr.v1.PolicySpec.bits": Number(0, 30),
    "ltrr.v1.PolicySpec.learning_rate": Number(0, _FINITE),
    "ltrr.v1.PolicySpec.power_t": Number(0, 1),
    "ltrr.v1.PolicySpec.mode": Enum(),
    "ltrr.v1.PolicySpec.cb_type": Enum(),
    "ltrr.v1.PolicySpec.optimizer": Enum(),
    "ltrr.v1.PolicySpec.retention_days": Number(0, MAX_RETENTION_DAYS),
    "ltrr.v1.PolicySpec.reward_scale": Number(0, MAX_ABS_REWARD),
    # counterfactual evaluation, tuning, import and export
    "ltrr.v1.EvaluatePolicyRequest.name": _ID,
    "ltrr.v1.EvaluatePolicyRequest.targets": Items("limits.max_evaluation_targets"),
    "ltrr.v1.EvaluatePolicyRequest.since_ms": _TIME,
    "ltrr.v1.EvaluatePolicyRequest.until_ms": _TIME,
    "ltrr.v1.EvaluatePolicyRequest.estimators": Items(3, each=Enum()),  # at most one of each
    "ltrr.v1.EvaluatePolicyRequest.baseline": Text(NAME_CHARS),  # a target's name
    "ltrr.v1.EvaluationTarget.name": Text(NAME_CHARS),
    "ltrr.v1.EvaluationTarget.live": Free("a bool"),
    "ltrr.v1.EvaluationTarget.snapshot_id": Free("a snapshot that does not exist is NOT_FOUND"),
    "ltrr.v1.EvaluationTarget.action": Text(NAME_CHARS),
    "ltrr.v1.EvaluationTarget.uniform": Free("a bool"),
    "ltrr.v1.EvaluationTarget.table": Nested(),
    "ltrr.v1.EvaluationTarget.candidate": Nested(),
    "ltrr.v1.EvaluationTarget.each_action": Free("a bool"),
    "ltrr.v1.TableTarget.default_weights": Items("limits.max_actions"),
    "ltrr.v1.TableTarget.feature": Text(FEATURE_PATH_CHARS),
    "ltrr.v1.TableTarget.by_value": Items(TABLE_VALUES),
    "ltrr.v1.FeatureTable.value": Text(NAME_CHARS),
    "ltrr.v1.FeatureTable.weights": Items("limits.max_actions"),
    "ltrr.v1.ActionWeight.action": Text(NAME_CHARS),
    "ltrr.v1.ActionWeight.weight": Number(0, _FINITE),
    "ltrr.v1.TunePolicyRequest.name": _ID,
    "ltrr.v1.TunePolicyRequest.candidates": Items("limits.max_evaluation_targets"),
    "ltrr.v1.TunePolicyRequest.since_ms": _TIME,
    "ltrr.v1.TunePolicyRequest.until_ms": _TIME,
    "ltrr.v1.TunePolicyRequest.apply": Free("a bool"),
    "ltrr.v1.ImportBatch.policy": _ID,
    "ltrr.v1.ImportBatch.lines": Items("limits.max_reward_batch", each=Text(DSJSON_LINE_CHARS)),
    "ltrr.v1.ImportBatch.first_line": Free("a line number, only repeated in the errors"),
    "ltrr.v1.ImportBatch.validate_only": Free("a bool"),
    "ltrr.v1.ExportEventsRequest.name": _ID,
    "ltrr.v1.ExportEventsRequest.since_ms": _TIME,
    "ltrr.v1.ExportEventsRequest.until_ms": _TIME,
    "ltrr.v1.CreateKeyRequest.tenant": _ID,
    "ltrr.v1.CreateKeyRequest.roles": Items(KEY_ROLES, each=Text(8)),
    "ltrr.v1.CreateKeyRequest.name": Text(KEY_NAME_CHARS),
    "ltrr.v1.CreateKeyRequest.subject": Text(SUBJECT_CHARS),
    "ltrr.v1.CreateKeyRequest.decisions_per_second": Number(0, MAX_QUOTA),
    "ltrr.v1.CreateKeyRequest.rewards_per_second": Number(0, MAX_QUOTA),
    "ltrr.v1.CreateKeyRequest.max_streams": Number(0, MAX_QUOTA),
    "ltrr.v1.RevokeKeyRequest.id": Text(KEY_ID_CHARS),
    "ltrr.v1.ListAuditRequest.since_ms": _TIME,
    "ltrr.v1.ListAuditRequest.limit": Number(0, MAX_AUDIT_ENTRIES),
}


def resolve(amount: Amount, settings: Any) -> int:
    """A bound's number: itself, or the setting it names, read from ``settings``."""
    if isinstance(amount, int):
        return amount
    value: Any = settings
    for part in amount.split("."):
        value = getattr(value, part)
    return int(value)
