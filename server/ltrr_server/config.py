"""Frozen, self-validating configuration: server settings, limits and policy specs.

Sources, later ones winning: built-in defaults, a TOML file, ``LTRR_*`` environment
variables (one rule for every setting: ``env_name``), command-line flags. Every error names the
offending field.

>>> spec = PolicySpec(name="demo", actions=(ActionSpec("a"), ActionSpec("b")))
>>> spec.vw_args()[:3]
['--cb_explore_adf', '--squarecb', '--gamma_scale']
>>> PolicySpec(name="x", epsilon=2.0)
Traceback (most recent call last):
...
ltrr_server.errors.InvalidArgument: spec.epsilon: must be in [0, 1], got 2.0
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ltrr_server import bounds
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import Namespaces, namespaces_from_json, namespaces_to_json
from ltrr_server.logs import LogSetup

KINDS = ("cb", "ccb")
EXPLORATIONS = ("epsilon", "softmax", "bag", "cover", "squarecb", "rnd")
AGGREGATIONS = ("first", "sum", "max")
MODES = ("online", "apprentice")
# How a policy's reward regression weighs a learned decision (VW's names): dm (direct method) counts
# it once; mtr (VW's importance-weighted regression) counts it 1/p times.
CB_TYPES = ("dm", "mtr")
OPTIMIZERS = ("adagrad", "coin")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A policy's name on the server: a tenant's policies are "<tenant>/<name>" (tenancy.py); clients
# send and see the name alone, which may not hold "/".
_POLICY_NAME_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_JOIN_WINDOW_S = 7 * 24 * 3600.0
MAX_ACTION_ID_CHARS = bounds.NAME_CHARS
MAX_DESCRIPTION_CHARS = bounds.DESCRIPTION_CHARS
MAX_INTERACTIONS = bounds.INTERACTIONS


def check_action_ids(ids: Sequence[str], field: str) -> None:
    """Action ids as a policy or a request gives them: present, bounded, distinct. Errors name
    ``field[i].id``.

    >>> check_action_ids(["a", "a"], "actions")
    Traceback (most recent call last):
    ...
    ltrr_server.errors.InvalidArgument: actions[1].id: duplicate action id 'a'
    """
    seen: set[str] = set()
    for i, action_id in enumerate(ids):
        if not action_id:
            raise InvalidArgument(f"{field}[{i}].id", "action id is empty")
        if len(action_id) > MAX_ACTION_ID_CHARS:
            raise InvalidArgument(f"{field}[{i}].id", f"longer than {MAX_ACTION_ID_CHARS} characters")
        if action_id in seen:
            raise InvalidArgument(f"{field}[{i}].id", f"duplicate action id {action_id!r}")
        seen.add(action_id)


def check_name(value: str, field_name: str) -> None:
    """A name of a policy, strategy or tenant: letters, digits, ``_.-``, at most 64 characters.

    >>> check_name("team a", "tenant")
    Traceback (most recent call last):
    ...
    ltrr_server.errors.InvalidArgument: tenant: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$, got 'team a'
    """
    if not _NAME_RE.match(value):
        raise InvalidArgument(field_name, f"must match {_NAME_RE.pattern}, got {value!r}")


def _finite(value: float, field_name: str) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(field_name, f"must be finite, got {value}")


@dataclass(frozen=True)
class ActionSpec:
    """A configured action: an id and its namespaced features."""

    id: str
    features: Namespaces = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "features": namespaces_to_json(self.features)}


# VW's own learning-rate decay exponent, which specs stored before ``power_t`` existed learned with.
VW_POWER_T = 0.5


@dataclass(frozen=True)
class PolicySpec:
    """What a policy is: its VW learning parameters, its actions and its join rules."""

    name: str
    kind: str = "cb"
    # The defaults a spec gets when it says nothing were chosen on the bandit suite
    # (``bench/bench_bandits.py``; the table is in docs/benchmarks.md; the figures here are from
    # VW alone over the suite's worlds, 2 seeds). SquareCB explores in
    # proportion to how much worse each action looks, where epsilon-greedy spends the same share
    # on every action and stops trying one that looked bad early: on 10 actions with small gaps
    # (logistic10, 10k events, 2 seeds) epsilon 0.05 ended at 0.71 of uniform's regret and
    # squarecb at 0.38; a gamma scale of 20 instead of VW's 10 brought 50 actions from 0.30 to
    # 0.22. Interactions of every pair of namespaces and of every pair with the action namespace A
    # ("::", "::A") let a policy personalize without knowing the caller's namespaces: the demo's
    # world, where the best action depends on segment and time of day together, went from 0.39
    # (pairs with A only) to 0.01-0.12. A learning-rate decay exponent of 0.25 instead of VW's 0.5
    # keeps a policy learning after a change (drift, other settings alike: 0.33 -> 0.23).
    # Learning each decision once (cb_type dm) instead of 1/p times (VW's mtr), through the
    # server, 3 seeds (medians): the demo's world 0.11 -> 0.011, delayed 0.23 -> 0.12, logistic50
    # 0.25 -> 0.20, the rest level; epsilon 0.05 on logistic10, VW alone: 0.49 -> 0.21.
    exploration: str = "squarecb"
    epsilon: float = 0.05
    softmax_lambda: float = 10.0
    ensemble_size: int = 4
    squarecb_gamma_scale: float = 20.0
    interactions: tuple[str, ...] = ("::", "::A")
    actions: tuple[ActionSpec, ...] = ()
    join_window_seconds: float = 10.0
    default_reward: float = 0.0
    aggregation: str = "first"
    slots: int = 1
    description: str = ""
    bits: int = 18
    learning_rate: float = 0.5
    # How fast the learning rate decays (VW --power_t: the rate at step t is proportional to
    # t^-power_t). 0 keeps it from decaying: for traffic whose best actions change.
    power_t: float = 0.25
    # How the reward regression weighs a learned decision: "dm" counts it once, "mtr" (VW's
    # default) 1/p times, p its logged probability. An explored action's p is small (under 0.01
    # once squarecb or epsilon 0.05 over 10 actions settle), so under mtr one noisy click moves
    # that action's estimate as much as a hundred would: the variance that kept VW's policies
    # behind a plain ridge regression. The weighting corrects the bias of a regression that
    # cannot represent the rewards; these linear models with interactions mostly can. The log
    # keeps every probability: counterfactual evaluation does not depend on this.
    cb_type: str = "dm"
    # How the reward regression's weights move: "adagrad" (VW's default: per-feature adaptive
    # steps, scaled by learning_rate and decaying with power_t) or "coin" (VW --coin: coin betting,
    # Orabona and Pal 2016, which sets its own step sizes and ignores learning_rate and power_t).
    # VW alone over the suite's worlds, 3 reward streams each (docs/benchmarks.md): coin was
    # better with few clicks (sparse 0.365 -> 0.331, 0.227 -> 0.162), 50 actions and late
    # rewards, and worse after an abrupt change (drift 0.269 -> 0.335), where adagrad's slowly
    # decaying steps keep learning. Through the server (3 seeds) each met the suite's bar in 26
    # of 27 runs, each winning some: adagrad stays the default and coin is for tune to try.
    optimizer: str = "adagrad"
    # What the model learns is reward / reward_scale: set it to the size of a large reward (revenue
    # in currency units, seconds of dwell) so that the model sees rewards of about 1, as VW's
    # defaults expect. AdaGrad's steps do not grow with the rewards, and SquareCB's exploration
    # shrinks as the gaps between actions' rewards grow: through the server on logistic10 (2 seeds,
    # docs/benchmarks.md) the default reached 0.208 and 0.110 of uniform's regret with clicks worth
    # 1, 0.220 and 0.631 with clicks worth 100, 0.758 and 0.759 with clicks worth 0.01; told the
    # scale, 0.181 and 0.141, 0.152 and 0.120. The log, evaluation and the window keep the rewards
    # as they came; only learning sees them scaled.
    reward_scale: float = 1.0
    # online: Decide draws from the policy. apprentice: Decide answers the caller's baseline action
    # and the policy learns from its rewards (cb only). Not a learning parameter: a switch keeps the model.
    mode: str = "online"
    # Days a decision stays in the event log (0: forever); log/retention.py prunes older ones.
    retention_days: float = 0.0

    def __post_init__(self) -> None:
        p = "spec"
        if not _POLICY_NAME_RE.match(self.name):
            raise InvalidArgument(f"{p}.name", f"must match {_NAME_RE.pattern}, got {self.name!r}")
        if self.kind not in KINDS:
            raise InvalidArgument(f"{p}.kind", f"must be one of {KINDS}, got {self.kind!r}")
        if self.exploration not in EXPLORATIONS:
            raise InvalidArgument(f"{p}.exploration", f"must be one of {EXPLORATIONS}, got {self.exploration!r}")
        _finite(self.epsilon, f"{p}.epsilon")
        if not 0.0 <= self.epsilon <= 1.0:
            raise InvalidArgument(f"{p}.epsilon", f"must be in [0, 1], got {self.epsilon}")
        _finite(self.softmax_lambda, f"{p}.softmax_lambda")
        if not 1 <= self.ensemble_size <= 64:
            raise InvalidArgument(f"{p}.ensemble_size", f"must be in [1, 64], got {self.ensemble_size}")
        _finite(self.squarecb_gamma_scale, f"{p}.squarecb_gamma_scale")
        if self.squarecb_gamma_scale <= 0:
            raise InvalidArgument(f"{p}.squarecb_gamma_scale", "must be positive")
        if len(self.interactions) > MAX_INTERACTIONS:
            raise InvalidArgument(f"{p}.interactions", f"{len(self.interactions)} interactions, more than "
                                                      f"{MAX_INTERACTIONS}")
        for i, inter in enumerate(self.interactions):
            if len(inter) not in (2, 3) or any(c in " |" for c in inter):
                raise InvalidArgument(
                    f"{p}.interactions[{i}]", f"must be 2 or 3 namespace initials (':' for any), got {inter!r}"
                )
        check_action_ids([a.id for a in self.actions], f"{p}.actions")
        _finite(self.join_window_seconds, f"{p}.join_window_seconds")
        if not 0 < self.join_window_seconds <= _MAX_JOIN_WINDOW_S:
            raise InvalidArgument(
                f"{p}.join_window_seconds", f"must be in (0, {_MAX_JOIN_WINDOW_S:.0f}], got {self.join_window_seconds}"
            )
        if problem := bounds.magnitude_problem(self.default_reward, bounds.MAX_ABS_REWARD):
            raise InvalidArgument(f"{p}.default_reward", problem)
        if self.aggregation not in AGGREGATIONS:
            raise InvalidArgument(f"{p}.aggregation", f"must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if not 1 <= self.slots <= 64:
            raise InvalidArgument(f"{p}.slots", f"must be in [1, 64], got {self.slots}")
        if self.kind == "cb" and self.slots != 1:
            raise InvalidArgument(f"{p}.slots", "a cb policy has exactly one slot; use kind ccb")
        if len(self.description) > MAX_DESCRIPTION_CHARS:
            raise InvalidArgument(f"{p}.description", f"longer than {MAX_DESCRIPTION_CHARS} characters")
        if not 1 <= self.bits <= 30:
            raise InvalidArgument(f"{p}.bits", f"must be in [1, 30], got {self.bits}")
        _finite(self.learning_rate, f"{p}.learning_rate")
        if self.learning_rate <= 0:
            raise InvalidArgument(f"{p}.learning_rate", "must be positive")
        if not (math.isfinite(self.power_t) and 0 <= self.power_t <= 1):
            raise InvalidArgument(f"{p}.power_t", f"must be in [0, 1], got {self.power_t}")
        if self.cb_type not in CB_TYPES:
            raise InvalidArgument(f"{p}.cb_type", f"must be one of {CB_TYPES}, got {self.cb_type!r}")
        if not (math.isfinite(self.reward_scale) and 0 < self.reward_scale <= bounds.MAX_ABS_REWARD):
            raise InvalidArgument(f"{p}.reward_scale",
                                  f"must be in (0, {bounds.MAX_ABS_REWARD:g}], got {self.reward_scale}")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidArgument(f"{p}.optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.mode not in MODES:
            raise InvalidArgument(f"{p}.mode", f"must be one of {MODES}, got {self.mode!r}")
        if self.mode == "apprentice" and self.kind != "cb":
            raise InvalidArgument(f"{p}.mode", "apprentice mode is for cb policies")
        if not (math.isfinite(self.retention_days) and 0 <= self.retention_days <= bounds.MAX_RETENTION_DAYS):
            raise InvalidArgument(f"{p}.retention_days",
                                  f"must be in [0, {bounds.MAX_RETENTION_DAYS}] (0: keep forever), "
                                  f"got {self.retention_days}")

    def vw_args(self) -> list[str]:
        """The Vowpal Wabbit command line of this policy's model."""
        args = ["--cb_explore_adf" if self.kind == "cb" else "--ccb_explore_adf"]
        e = self.exploration
        if e == "epsilon":
            args += ["--epsilon", repr(self.epsilon)]
        elif e == "softmax":
            args += ["--softmax", "--lambda", repr(self.softmax_lambda)]
        elif e in ("bag", "cover", "rnd"):
            args += [f"--{e}", str(self.ensemble_size), "--epsilon", repr(self.epsilon)]
        elif e == "squarecb":
            args += ["--squarecb", "--gamma_scale", repr(self.squarecb_gamma_scale)]
        for inter in self.interactions:
            args += ["-q" if len(inter) == 2 else "--cubic", inter]
        args += ["-b", str(self.bits)]
        if self.optimizer == "coin":
            # Coin betting has no learning rate or decay: leaving them out keeps a change to
            # either from starting a new lineage that would learn exactly the same.
            return args + ["--coin", "--quiet"]
        args += ["-l", repr(self.learning_rate)]
        if self.power_t != VW_POWER_T:
            # Only when it differs from VW's own default: the models of specs stored before this
            # field existed learned with that default, and their arguments must not change.
            args += ["--power_t", repr(self.power_t)]
        return args + ["--quiet"]

    def learning_params(self) -> tuple[object, ...]:
        """The fields that define the model; a change to any of them starts a new lineage."""
        return (*self.vw_args(), f"cb_type={self.cb_type}", f"reward_scale={self.reward_scale!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["interactions"] = list(self.interactions)
        d["actions"] = [a.to_dict() for a in self.actions]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field_prefix: str = "spec") -> PolicySpec:
        """Builds a spec from JSON (as stored) or TOML (as configured) data."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"{field_prefix}.{unknown[0]}", "unknown policy field")
        kwargs = dict(data)
        if "name" not in kwargs:
            raise InvalidArgument(f"{field_prefix}.name", "missing")
        if "interactions" in kwargs:
            kwargs["interactions"] = tuple(kwargs["interactions"])
        actions = []
        for i, a in enumerate(kwargs.get("actions", ())):
            if not isinstance(a, Mapping) or "id" not in a:
                raise InvalidArgument(f"{field_prefix}.actions[{i}].id", "missing")
            feats = a.get("features", [])
            if isinstance(feats, Mapping):  # TOML: {namespace = {feature = value}}
                feats = [[ns, list(fs.items())] for ns, fs in feats.items()]
            actions.append(ActionSpec(str(a["id"]), namespaces_from_json(feats)))
        kwargs["actions"] = tuple(actions)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise InvalidArgument(field_prefix, str(exc)) from exc


@dataclass(frozen=True)
class Limits:
    """Bounds on requests and on every in-memory buffer."""

    max_actions: int = 256
    max_features: int = 1024
    max_request_bytes: int = 4 * 1024 * 1024
    # Decisions waiting for their join window, in memory: each holds its context's VW line (a few
    # hundred bytes), a Search's also its page's features (about 2 KB), so 500k pending Searches
    # are about 1 GB. Past it, decisions are refused (RESOURCE_EXHAUSTED) until joins catch up.
    max_pending_joins: int = 500_000
    # Recently joined decisions remembered to classify their later rewards without a database
    # look-up (duplicate, accepted after an early join, late); older ones are looked up.
    max_recent_joins: int = 50_000
    max_write_queue_rows: int = 200_000
    max_stream_inflight_batches: int = 64
    # DecideStream: decisions made and not yet written back (it reads ahead of its writes).
    max_stream_unsent_decisions: int = 256
    max_reward_batch: int = 10_000
    # Autocomplete: sessions the server keeps, queries kept per session, prefix length.
    max_sessions: int = 100_000
    max_session_queries: int = 5
    max_prefix_chars: int = 256
    # RecordQuery, Autocomplete's previous queries and XmrPredict: characters in one query, and
    # previous queries one Autocomplete request may send.
    max_query_chars: int = 512
    max_previous_queries: int = 32
    # XmrPredict: queries in one request (each is vectorized and searched on the server).
    max_predict_queries: int = 1024
    # EvaluatePolicy: evaluations running at once, each in a process of its own (a core while it runs).
    max_evaluations: int = 1
    # EvaluatePolicy: targets in one request (each keeps two numbers per event and slot).
    max_evaluation_targets: int = 64
    # Policies one tenant holds (configured and created): each is a VW model in memory (a few MB at
    # 18 bits) and a set of metric labels. CreatePolicy past it: RESOURCE_EXHAUSTED.
    max_policies: int = 100
    # Quotas of an API key that sets none of its own (server.auth = "keys"): decisions (Decide and
    # each DecideStream message, Retrieve, the model service's calls) and reward events per second,
    # each a token bucket holding one second's worth; streams open at once.
    key_decisions_per_second: int = 100_000
    key_rewards_per_second: int = 100_000
    key_max_streams: int = 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"limits.{f.name}", f"must be a positive integer, got {value!r}")
        if self.max_reward_batch > self.max_write_queue_rows:
            # A batch is queued whole or refused: one larger than the queue could never be taken.
            raise InvalidArgument("limits.max_reward_batch", f"{self.max_reward_batch} is more than "
                                  f"limits.max_write_queue_rows={self.max_write_queue_rows}: such a batch could "
                                  "never be queued")


@dataclass(frozen=True)
class StrategySpec:
    """One configured strategy: its name, its kind (registered implementation), its budget ladder."""

    name: str
    kind: str
    budgets: tuple[int, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = f"retrieval.strategies.{self.name}"
        if not _NAME_RE.match(self.name):
            raise InvalidArgument(p, f"strategy name must match {_NAME_RE.pattern}")
        if not self.budgets:
            raise InvalidArgument(f"{p}.budgets", "is empty")
        for i, b in enumerate(self.budgets):
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 10_000:
                raise InvalidArgument(f"{p}.budgets[{i}]", f"must be an integer in [0, 10000], got {b!r}")
        if len(set(self.budgets)) != len(self.budgets):
            raise InvalidArgument(f"{p}.budgets", "has repeated values")


RANKERS = ("online", "fusion")
# The candidate feature groups a ranker can use (ranking/features.py says what each holds).
FEATURE_GROUPS = ("strategies", "item", "match", "memory", "user", "context")


@dataclass(frozen=True)
class RankingSettings:
    """How Search ranks the retrieved union into a page (``[retrieval.ranking]``).

    >>> RankingSettings(features=("item", "colour"))
    Traceback (most recent call last):
    ...
    ltrr_server.errors.InvalidArgument: retrieval.ranking.features[1]: unknown feature group 'colour'; \
known: strategies, item, match, memory, user, context
    """

    # "online" (learned from engagement, in the server), "fusion" (reciprocal rank fusion, not
    # learned), or "model:NAME" (a ranker trained with `ltrr train ranker`, its live version).
    ranker: str = "online"
    page_size: int = 10
    # The share of pages on which the ranker swaps two adjacent results in the top
    # ``explore_depth``: the randomized interventions that position bias is estimated from.
    explore: float = 0.1
    explore_depth: int = 10
    features: tuple[str, ...] = FEATURE_GROUPS
    # The online ranker's learning rate (VW's -l) and the smallest examination probability an
    # engagement is divided by (its importance weight is at most the inverse).
    learning_rate: float = 0.05
    min_examination: float = 0.05
    # Reward a plan by whether an engaged item reached the page (not only the union).
    page_reward: bool = True
    # Engagements kept per user (the user features), and users kept.
    user_history: int = 50
    max_users: int = 100_000

    def __post_init__(self) -> None:
        p = "retrieval.ranking"
        if self.ranker not in RANKERS and not (self.ranker.startswith("model:") and _NAME_RE.match(self.ranker[6:])):
            raise InvalidArgument(f"{p}.ranker", f"must be one of {', '.join(RANKERS)} or model:NAME, "
                                                 f"got {self.ranker!r}")
        if not 1 <= self.page_size <= bounds.MAX_PAGE_SIZE:
            raise InvalidArgument(f"{p}.page_size", f"must be in [1, {bounds.MAX_PAGE_SIZE}], got {self.page_size}")
        _finite(self.explore, f"{p}.explore")
        if not 0 <= self.explore <= 1:
            raise InvalidArgument(f"{p}.explore", f"must be in [0, 1], got {self.explore}")
        if not 2 <= self.explore_depth <= bounds.MAX_PAGE_SIZE:
            raise InvalidArgument(f"{p}.explore_depth", f"must be in [2, {bounds.MAX_PAGE_SIZE}], "
                                                        f"got {self.explore_depth}")
        for i, group in enumerate(self.features):
            if group not in FEATURE_GROUPS:
                raise InvalidArgument(f"{p}.features[{i}]", f"unknown feature group {group!r}; "
                                                             f"known: {', '.join(FEATURE_GROUPS)}")
        _finite(self.learning_rate, f"{p}.learning_rate")
        if not 0 < self.learning_rate <= 10:
            raise InvalidArgument(f"{p}.learning_rate", f"must be in (0, 10], got {self.learning_rate}")
        _finite(self.min_examination, f"{p}.min_examination")
        if not 0 < self.min_examination <= 1:
            raise InvalidArgument(f"{p}.min_examination", f"must be in (0, 1], got {self.min_examination}")
        if not 0 <= self.user_history <= 10_000:
            raise InvalidArgument(f"{p}.user_history", f"must be in [0, 10000], got {self.user_history}")
        if not 1 <= self.max_users <= 100_000_000:
            raise InvalidArgument(f"{p}.max_users", f"must be in [1, 100000000], got {self.max_users}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RankingSettings:
        if not isinstance(data, Mapping):
            raise InvalidArgument("retrieval.ranking", "must be a table")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidArgument(f"retrieval.ranking.{key}", "unknown setting")
        kwargs = dict(data)
        if "features" in kwargs:
            if not isinstance(kwargs["features"], list | tuple):
                raise InvalidArgument("retrieval.ranking.features", "must be a list of feature groups")
            kwargs["features"] = tuple(kwargs["features"])
        for key, default in ((f.name, f.default) for f in dataclasses.fields(cls)):
            value = kwargs.get(key)
            if value is None or key == "features":
                continue
            ok = (isinstance(value, bool) if isinstance(default, bool) else
                  isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int) else
                  isinstance(value, int | float) and not isinstance(value, bool) if isinstance(default, float) else
                  isinstance(value, str))
            if not ok:
                raise InvalidArgument(f"retrieval.ranking.{key}", f"must be {type(default).__name__}, got {value!r}")
        return cls(**kwargs)


@dataclass(frozen=True)
class RetrievalSettings:
    """The catalog, the strategies and the plan policies of Retrieve. No strategies: no Retrieve."""

    data_dir: str = "ltrr-data"
    # A catalog JSONL ingested at start while the catalog is empty (else demo_items, if set).
    catalog_path: str = ""
    # Items of the generated music demo catalog ingested at start while the catalog is empty.
    demo_items: int = 0
    demo_seed: int = 42
    # cb policies whose actions are the plans (generated; their configured actions are ignored).
    policies: tuple[str, ...] = ()
    # The plan reward: 1 if an engaged item is among the candidates, minus this per candidate drawn.
    cost_per_candidate: float = 0.0005
    rrf_k: float = 60.0
    max_query_chars: int = 512
    # How often the plans' action features (recent hit rate, latency) are refreshed.
    feature_refresh_seconds: float = 10.0
    strategies: tuple[StrategySpec, ...] = ()
    # How Search ranks the union into a page.
    ranking: RankingSettings = field(default_factory=RankingSettings)

    def __post_init__(self) -> None:
        p = "retrieval"
        if self.demo_items < 0:
            raise InvalidArgument(f"{p}.demo_items", "must not be negative")
        _finite(self.cost_per_candidate, f"{p}.cost_per_candidate")
        if not 0 <= self.cost_per_candidate <= 1:
            raise InvalidArgument(f"{p}.cost_per_candidate", f"must be in [0, 1], got {self.cost_per_candidate}")
        _finite(self.rrf_k, f"{p}.rrf_k")
        if self.rrf_k <= 0:
            raise InvalidArgument(f"{p}.rrf_k", "must be positive")
        if not 1 <= self.max_query_chars <= 100_000:
            raise InvalidArgument(f"{p}.max_query_chars", "must be in [1, 100000]")
        _finite(self.feature_refresh_seconds, f"{p}.feature_refresh_seconds")
        if self.feature_refresh_seconds <= 0:
            raise InvalidArgument(f"{p}.feature_refresh_seconds", "must be positive")
        if self.policies and not self.strategies:
            raise InvalidArgument(f"{p}.strategies", "retrieval policies need at least one strategy")

    @property
    def enabled(self) -> bool:
        return bool(self.strategies)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RetrievalSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = dict(data)
        for key in kwargs:
            if key not in known:
                raise InvalidArgument(f"retrieval.{key}", "unknown setting")
        strategies = []
        raw = kwargs.get("strategies", {})
        if not isinstance(raw, Mapping):
            raise InvalidArgument("retrieval.strategies", "must be a table of strategies")
        for name, conf in raw.items():
            if not isinstance(conf, Mapping):
                raise InvalidArgument(f"retrieval.strategies.{name}", "must be a table")
            conf = dict(conf)
            budgets = conf.pop("budgets", None)
            if not isinstance(budgets, list):
                raise InvalidArgument(f"retrieval.strategies.{name}.budgets", "missing (a list of integers)")
            kind = conf.pop("kind", name)
            strategies.append(StrategySpec(str(name), str(kind), tuple(budgets), conf))
        kwargs["strategies"] = tuple(strategies)
        kwargs["policies"] = tuple(kwargs.get("policies", ()))
        kwargs["ranking"] = RankingSettings.from_mapping(kwargs.get("ranking", {}))
        return cls(**kwargs)


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start."""

    db_url: str = "sqlite:///ltrr.db"
    # "" binds loopback (127.0.0.1) without authentication and every interface (0.0.0.0) with it.
    grpc_host: str = ""
    grpc_port: int = 50051
    # "keys": every call but health's needs an API key with the method's role (ltrr keys create;
    # api/auth.py). "none": anyone who reaches the port may do anything, so the server binds only
    # loopback unless told `insecure`.
    auth: str = "none"
    # Bind beyond loopback with auth = "none" (a warning in the log and ltrr_insecure = 1).
    insecure: bool = False
    # The admin service on a port of its own (-1: on the gRPC port), at admin_host.
    admin_port: int = -1
    admin_host: str = "127.0.0.1"
    # gRPC server reflection (grpcurl lists and calls the services); with auth, it needs a key.
    reflection: bool = True
    # -1 disables the metrics HTTP endpoint; 0 picks a free port. Its address is grpc_host's
    # unless metrics_host says otherwise.
    metrics_port: int = 9464
    metrics_host: str = ""
    # TLS on the gRPC port (PEM files, read again when they change): the certificate chain and key,
    # and the CA whose certificates clients must present (mutual TLS). "" = plaintext.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Serve the metrics endpoint over HTTPS too, with the same certificate (read at the start).
    metrics_tls: bool = False
    # Keepalive (HTTP/2 pings). The server pings a connection quiet for this long and closes it
    # when no answer comes within 20 s (or this long, if shorter): a client gone without a word
    # (a partition, a pod killed) frees its streams in about 80 s instead of TCP's hours.
    keepalive_seconds: float = 60.0
    # Clients may ping this often, with calls open or not. grpc's own floor is 5 minutes, past
    # which it answers GOAWAY too_many_pings: a client pinging more often (grpc-go and Envoy
    # configurations commonly do) lost its idle reward stream after its third ping. ltrr's own
    # TypeScript client pings every 30 s: its idle StreamRewards ended after 2 minutes
    # (RESOURCE_EXHAUSTED "Bandwidth exhausted"); a Python one pinging every second, after 3 s
    # (UNAVAILABLE "Too many pings"). ltrr's Python client pings every 30 s, on quiet streams too.
    client_ping_min_seconds: float = 10.0
    snapshot_interval_seconds: float = 60.0
    # How often the learner hands the decision path a fresh model copy (a copy costs ~10 ms of CPU).
    publish_interval_seconds: float = 0.25
    # How much nicer (0-19, added to the server's niceness) the learner process runs. When both
    # cores are busy, decisions and acks come first and the learner lags, then catches up (its
    # backlog is bounded by limits.max_pending_joins); when they are not, it changes nothing.
    learner_nice: int = 10
    write_batch_rows: int = 5000
    # At a stop, how long the event log keeps retrying a database that is away before it gives
    # up on what is queued (nothing of it was acknowledged). Under docker stop's 10 s.
    shutdown_timeout_seconds: float = 5.0
    # Commits failing (the database away) for this long hold the feedback service NOT_SERVING:
    # no acknowledgement can be given meanwhile.
    commit_stall_seconds: float = 5.0
    # A commit this long in the writer process is taken for a database that hangs: the process is
    # replaced and the batch committed through the new one.
    commit_timeout_seconds: float = 60.0
    # A first start's work (catalog, indexes, demo models) that failed is tried again after this,
    # then after twice as long, and so on up to 20 times as long.
    first_start_retry_seconds: float = 30.0
    # How long a group commit waits for more rows when the queue is short: while an ack waits
    # (adds to ack latency), and while only rows nobody waits for are queued (decisions, joins).
    write_linger_seconds: float = 0.002
    write_idle_linger_seconds: float = 0.05
    # Where decisions are journaled before they are answered, so that a server killed before their
    # commit loses none (log/journal.py): "" puts it beside a SQLite file, or in ./ltrr-journal for
    # another database; "none" turns it off (an in-memory SQLite database never has one).
    journal_dir: str = ""
    # Commit the event log from a child process, so that handing the driver its rows does not
    # hold this process's interpreter lock (ignored for an in-memory SQLite database).
    writer_process: bool = True
    metrics_window: int = 10_000
    # Trained models (XR-Linear) live here, one folder per name and version.
    model_dir: str = "ltrr-models"
    # How often the policies with a retention_days have their old events pruned (log/retention.py).
    prune_interval_seconds: float = 3600.0
    # A promotion whose negative flip rate against the live model is above this is refused
    # unless forced.
    max_nfr: float = 0.05
    # While no model named "autocomplete" is registered, the start trains one on this many demo
    # sessions over the demo music world and makes it live (0: never). The embedded demo sets it.
    demo_autocomplete_sessions: int = 0
    # Every ltrr process's log: debug, info, warning or error; "text" or "json" (one object a line).
    log_level: str = "info"
    log_format: str = "text"
    # OpenTelemetry traces (tracing.py): "none", or "otlp" to send them to an OTLP/gRPC collector
    # at tracing_endpoint ("": OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317). Of the
    # calls whose caller sent no traceparent, tracing_sample_ratio are traced.
    tracing: str = "none"
    tracing_endpoint: str = ""
    tracing_sample_ratio: float = 1.0
    limits: Limits = field(default_factory=Limits)
    policies: tuple[PolicySpec, ...] = ()
    # Per configured policy, the fields its [[policies]] table sets (the rest are defaults, which
    # a later version may change); a policy not here sets them all. A start compares these with
    # what the file set when the server last read it (core.policies.from_config).
    policy_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)

    def __post_init__(self) -> None:
        if not self.db_url:
            raise InvalidArgument("server.db_url", "is empty")
        _finite(self.prune_interval_seconds, "server.prune_interval_seconds")
        if self.prune_interval_seconds <= 0:
            raise InvalidArgument("server.prune_interval_seconds", "must be positive")
        LogSetup(self.log_level, self.log_format)  # checks both
        if self.tracing not in TRACING_MODES:
            raise InvalidArgument("server.tracing", f"must be one of {', '.join(TRACING_MODES)}, got {self.tracing!r}")
        ratio = self.tracing_sample_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:  # NaN too
            raise InvalidArgument("server.tracing_sample_ratio", f"must be in [0, 1], got {ratio!r}")
        endpoint = self.tracing_endpoint
        if endpoint and (not endpoint.startswith(("http://", "https://")) or any(c.isspace() for c in endpoint)):
            raise InvalidArgument("server.tracing_endpoint",
                                  f"must be a URL such as http://collector:4317 (https:// for TLS), got {endpoint!r}")
        if not 0 <= self.grpc_port <= 65535:
            raise InvalidArgument("server.grpc_port", f"must be in [0, 65535], got {self.grpc_port}")
        if not -1 <= self.metrics_port <= 65535:
            raise InvalidArgument("server.metrics_port", f"must be in [-1, 65535], got {self.metrics_port}")
        if self.auth not in AUTH_MODES:
            raise InvalidArgument("server.auth", f"must be one of {AUTH_MODES}, got {self.auth!r}")
        for name in ("insecure", "reflection"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"server.{name}", f"must be true or false, got {getattr(self, name)!r}")
        if not -1 <= self.admin_port <= 65535:
            raise InvalidArgument("server.admin_port", f"must be in [-1, 65535], got {self.admin_port}")
        if self.auth == "none" and not self.insecure:
            for name, host in self.exposed():
                raise InvalidArgument(name, f"binding {host} without authentication would let anyone who "
                                            "reaches it change policies: set server.auth = \"keys\" (and make "
                                            "keys with `ltrr keys create`), or --insecure to do it anyway")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("server.tls_key" if self.tls_cert else "server.tls_cert",
                                  "TLS needs both tls_cert and tls_key")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidArgument("server.tls_client_ca", "client certificates need TLS: set tls_cert and tls_key")
        if self.metrics_tls and not self.tls_cert:
            raise InvalidArgument("server.metrics_tls", "needs tls_cert and tls_key")
        for name in ("write_linger_seconds", "write_idle_linger_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise InvalidArgument(f"server.{name}", f"must be in [0, 1], got {value}")
        for name in ("snapshot_interval_seconds", "publish_interval_seconds", "shutdown_timeout_seconds",
                     "commit_stall_seconds", "commit_timeout_seconds", "first_start_retry_seconds",
                     "keepalive_seconds", "client_ping_min_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgument(f"server.{name}", f"must be a positive number, got {value}")
        if self.write_batch_rows < 1:
            raise InvalidArgument("server.write_batch_rows", "must be positive")
        if isinstance(self.learner_nice, bool) or not isinstance(self.learner_nice, int) \
                or not 0 <= self.learner_nice <= 19:
            raise InvalidArgument("server.learner_nice", f"must be an integer in [0, 19], got {self.learner_nice!r}")
        if not isinstance(self.writer_process, bool):
            raise InvalidArgument("server.writer_process", f"must be true or false, got {self.writer_process!r}")
        if not (math.isfinite(self.max_nfr) and 0 <= self.max_nfr <= 1):
            raise InvalidArgument("server.max_nfr", f"must be in [0, 1], got {self.max_nfr}")
        if not 0 <= self.demo_autocomplete_sessions <= 1_000_000:
            raise InvalidArgument("server.demo_autocomplete_sessions",
                                  f"must be in [0, 1000000], got {self.demo_autocomplete_sessions}")
        if self.metrics_window < 1:
            raise InvalidArgument("server.metrics_window", "must be positive")
        for i, policy in enumerate(self.policies):
            if len(policy.actions) > self.limits.max_actions:
                raise InvalidArgument(f"policies[{i}].actions", f"{len(policy.actions)} actions, more than "
                                                                f"limits.max_actions={self.limits.max_actions}")
        if len(self.policies) > self.limits.max_policies:
            raise InvalidArgument("policies", f"{len(self.policies)} policies, more than "
                                              f"limits.max_policies={self.limits.max_policies}")
        names = [p.name for p in self.policies]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise InvalidArgument(f"policies[{i}].name", f"duplicate policy {name!r}")
        for i, name in enumerate(self.retrieval.policies):
            spec = next((p for p in self.policies if p.name == name), None)
            if spec is None:
                raise InvalidArgument(f"retrieval.policies[{i}]", f"no policy {name!r} in [[policies]]")
            if spec.kind != "cb":
                raise InvalidArgument(f"retrieval.policies[{i}]", f"policy {name!r} must be of kind cb (plans)")
            if spec.mode == "apprentice":
                raise InvalidArgument(f"retrieval.policies[{i}]", f"policy {name!r} is an apprentice, but Retrieve "
                                                                  f"and Search requests name no baseline to serve")

    @property
    def bind_host(self) -> str:
        """The gRPC listen address: grpc_host, or by default loopback unless keys are required."""
        return self.grpc_host or ("0.0.0.0" if self.auth == "keys" else "127.0.0.1")

    @property
    def logs(self) -> LogSetup:
        return LogSetup(self.log_level, self.log_format)

    def exposed(self) -> list[tuple[str, str]]:
        """(setting, address) of each gRPC address this server binds beyond loopback."""
        bound = [("server.grpc_host", self.bind_host)]
        if self.admin_port >= 0:
            bound.append(("server.admin_host", self.admin_host))
        return [(name, host) for name, host in bound if not is_loopback(host)]


AUTH_MODES = ("none", "keys")
TRACING_MODES = ("none", "otlp")


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches this machine only.

    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0", "10.1.2.3", "")]
    [True, True, True, False, False, False]
    """
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


ENV_PREFIX = "LTRR_"
# LTRR_* variables that are not server settings: the clients' own, the
# configuration file's, and the test suite's.
_NOT_SETTINGS = frozenset({"LTRR_TARGET", "LTRR_API_KEY", "LTRR_CONFIG", "LTRR_TEST_PG_URL",
                           "LTRR_REQUIRE_PG"})
# LTRR_CONFIG's value (or --config's) for the embedded demo configuration.
DEMO_CONFIG = "demo"


def env_name(section: str, key: str) -> str:
    """The environment variable of a setting: ``LTRR_`` and the key for ``[server]``, with the
    section and a double underscore for the others.

    >>> env_name("server", "db_url"), env_name("limits", "max_actions"), env_name("retrieval", "rrf_k")
    ('LTRR_DB_URL', 'LTRR_LIMITS__MAX_ACTIONS', 'LTRR_RETRIEVAL__RRF_K')
    """
    return ENV_PREFIX + (key if section == "server" else f"{section}__{key}").upper()


def _env_value(text: str, default: Any, var: str) -> Any:
    """An environment value as its setting's type: booleans as 1/0, true/false, yes/no, on/off;
    lists and tables as TOML (``LTRR_RETRIEVAL__POLICIES='["search"]'``)."""
    try:
        if isinstance(default, bool):
            return _flag(text)
        if isinstance(default, (int, float, str)):
            return type(default)(text)
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, tomllib.TOMLDecodeError):
        kind = {bool: "a boolean (1/0, true/false)", int: "an integer", float: "a number"}.get(
            type(default), "a TOML value")
        raise InvalidArgument(var, f"cannot parse {text!r}: expected {kind}") from None


# Settings' fields that come from sections of their own (or from them), not from [server].
_NOT_SERVER_SETTINGS = frozenset({"limits", "policies", "policy_fields", "retrieval"})


def _env_sections() -> dict[str, dict[str, Any]]:
    """Per section, each setting's default, by key (policies come from the file only)."""
    server = {f.name: getattr(Settings(), f.name) for f in dataclasses.fields(Settings)
              if f.name not in _NOT_SERVER_SETTINGS}
    return {"server": server,
            "limits": {f.name: getattr(Limits(), f.name) for f in dataclasses.fields(Limits)},
            "retrieval": {f.name: getattr(RetrievalSettings(), f.name) for f in dataclasses.fields(RetrievalSettings)}}


def _env_names() -> dict[str, tuple[str, str, Any]]:
    return {env_name(section, key): (section, key, default)
            for section, keys in _env_sections().items() for key, default in keys.items()}


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """Overlays ``LTRR_*`` variables on a configuration mapping, one rule for every setting (``env_name``)."""
    names = _env_names()
    for var, text in env.items():
        if var in names:
            section, key, default = names[var]
            data.setdefault(section, {})[key] = _env_value(text, default, var)


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """The ``LTRR_*`` variables that name no setting (a typo, most likely); ``ltrr serve`` logs them.

    >>> unknown_env({"LTRR_GRPC_PROT": "1", "LTRR_GRPC_PORT": "1", "LTRR_TARGET": "h:1", "HOME": "/"})
    ['LTRR_GRPC_PROT']
    """
    names = _env_names()
    return sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in _NOT_SETTINGS and v not in names)


def demo_config_text() -> str:
    """The embedded demo configuration `ltrr serve` uses when given no --config."""
    return resources.files("ltrr_server").joinpath("demo.toml").read_text()


def settings_from_toml(text: str, source: str = "config") -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(source, f"not valid TOML: {exc}") from exc
    return settings_from_mapping(data)


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    unknown = sorted(set(data) - {"server", "limits", "policies", "retrieval"})
    if unknown:
        raise InvalidArgument(unknown[0], "unknown configuration section")
    server = dict(data.get("server", {}))
    known = {f.name for f in dataclasses.fields(Settings)} - _NOT_SERVER_SETTINGS
    for key in server:
        if key not in known:
            raise InvalidArgument(f"server.{key}", "unknown setting")
    limits_data = dict(data.get("limits", {}))
    limit_names = {f.name for f in dataclasses.fields(Limits)}
    for key in limits_data:
        if key not in limit_names:
            raise InvalidArgument(f"limits.{key}", "unknown limit")
    policies = tuple(
        PolicySpec.from_dict(p, field_prefix=f"policies[{i}]") for i, p in enumerate(data.get("policies", []))
    )
    fields = {spec.name: tuple(sorted(p)) for spec, p in zip(policies, data.get("policies", []), strict=True)}
    retrieval = RetrievalSettings.from_mapping(data.get("retrieval", {}))
    return Settings(limits=Limits(**limits_data), policies=policies, policy_fields=fields, retrieval=retrieval,
                    **server)


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults < config file (``config_path``, else ``LTRR_CONFIG``, else the embedded demo, also
    named "demo") < LTRR_* environment < explicit overrides.

    Every setting of ``[server]``, ``[limits]`` and ``[retrieval]`` can come from the environment
    (``env_name``); an ``LTRR_*`` variable that names none is ignored here (``unknown_env``: the
    server logs them once its log is set up)."""
    env = os.environ if env is None else env
    config_path = config_path or env.get("LTRR_CONFIG") or DEMO_CONFIG
    demo = str(config_path) == DEMO_CONFIG
    try:
        text = demo_config_text() if demo else Path(config_path).read_text()
    except OSError as exc:
        raise InvalidArgument("config", f"cannot read {str(config_path)!r}: {exc.strerror}") from None
    source = "demo.toml" if demo else str(config_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(source, f"not valid TOML: {exc}") from exc
    apply_env(data, env)
    settings = settings_from_mapping(data)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(settings, **changes) if changes else settings
