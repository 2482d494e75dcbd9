"""Every ltrr metric, registered on an injected registry (no globals: each test builds its own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class Metrics:
    """The server's metrics. Per-policy gauges that are computed on scrape use ``watch_policy``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[object, ...], Any] = {}
        self.rpc_duration = Histogram(
            "ltrr_rpc_duration_seconds", "Server-side RPC (or stream message) handling time.",
            ["method", "code"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.decisions = Counter(
            "ltrr_decisions", "Decisions made.", ["policy"], registry=registry,
        )
        self.explored = Counter(
            "ltrr_explored_decisions", "Decisions whose chosen action was not the model's greedy one.",
            ["policy"], registry=registry,
        )
        self.rewards = Counter(
            "ltrr_rewards", "Reward events by join outcome.", ["policy", "outcome"], registry=registry,
        )
        self.joined = Counter(
            "ltrr_joined_events", "Decisions whose join window closed, by where the reward came from.",
            ["policy", "source"], registry=registry,
        )
        self.learned = Counter(
            "ltrr_learned_events", "Joined events learned by the policy's model.", ["policy"], registry=registry,
        )
        self.true_regret = Counter(
            "ltrr_true_regret", "Cumulative true regret, from rewards that carry oracle values.",
            ["policy"], registry=registry,
        )
        self.snapshots = Counter(
            "ltrr_snapshots", "Model snapshots written.", ["policy", "trigger"], registry=registry,
        )
        self.model_version = Gauge(
            "ltrr_model_version", "Model version serving decisions.", ["policy"], registry=registry,
        )
        self.learner_lag_events = Gauge(
            "ltrr_learner_lag_events", "Joined events not yet learned.", ["policy"], registry=registry,
        )
        self.learner_lag_seconds = Gauge(
            "ltrr_learner_lag_seconds",
            "Time from an event's join to its learned model serving decisions (latest event).",
            ["policy"], registry=registry,
        )
        self.mean_reward = Gauge(
            "ltrr_reward_mean", "Mean reward over the last metrics_window joined events.",
            ["policy"], registry=registry,
        )
        self.estimated_regret = Gauge(
            "ltrr_estimated_regret",
            "Best fixed action's self-normalized IPS value minus the logged mean reward, over the window. "
            "Negative: the policy beats every fixed action.",
            ["policy"], registry=registry,
        )
        self.true_regret_mean = Gauge(
            "ltrr_true_regret_mean", "Mean true regret per event over the window (oracle rewards only).",
            ["policy"], registry=registry,
        )
        self.exploration_share = Gauge(
            "ltrr_exploration_share", "Share of the window's decisions that explored.",
            ["policy"], registry=registry,
        )
        self.learner_up = Gauge(
            "ltrr_learner_up", "1 while the learner process runs.", registry=registry,
        )
        self.pending_joins = Gauge(
            "ltrr_pending_joins", "Decisions waiting for their join window to close.", registry=registry,
        )
        self.write_queue_rows = Gauge(
            "ltrr_write_queue_rows", "Rows waiting for the next group commit.", registry=registry,
        )
        self.db_write_seconds = Histogram(
            "ltrr_db_write_seconds", "Time of one group commit.", buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.db_write_rows = Histogram(
            "ltrr_db_write_batch_rows", "Rows per group commit.",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000), registry=registry,
        )
        self.db_write_errors = Counter(
            "ltrr_db_write_errors", "Group commits that failed.", registry=registry,
        )

        self.strategy_duration = Histogram(
            "ltrr_strategy_duration_seconds", "Time of one strategy run inside Retrieve.", ["strategy"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.strategy_candidates = Histogram(
            "ltrr_strategy_candidates", "Candidates one strategy run returned.", ["strategy"],
            buckets=(0, 1, 5, 10, 20, 50, 100, 200, 500, 1000), registry=registry,
        )
        self.strategy_errors = Counter(
            "ltrr_strategy_errors", "Strategy runs that failed (the request went on without them).", ["strategy"],
            registry=registry,
        )
        self.strategy_runs = Counter(
            "ltrr_strategy_joined_runs", "Joined retrievals in which the strategy ran.", ["strategy"],
            registry=registry,
        )
        self.strategy_hits = Counter(
            "ltrr_strategy_hits", "Joined retrievals in which the strategy found an engaged item "
            "(hit rate = hits / joined runs).", ["strategy"], registry=registry,
        )
        self.plan_choices = Counter(
            "ltrr_plan_choices", "Plans chosen by retrieval policies (fixed: asked for by the caller).",
            ["policy", "plan", "fixed"], registry=registry,
        )
        self.retrieval_candidates = Histogram(
            "ltrr_retrieval_candidates", "Candidates in one Retrieve response (the deduplicated union).",
            ["policy"], buckets=(0, 1, 5, 10, 20, 50, 100, 200, 500, 1000), registry=registry,
        )
        self.retrieval_joins = Counter(
            "ltrr_retrieval_joins", "Joined retrievals: an engaged item was among the candidates, or not.",
            ["policy", "result"], registry=registry,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: on the hot paths the look-up costs more than the update."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.child(self.rpc_duration, method, code).observe(seconds)

    def watch_policy(self, policy: str, window_stats: Callable[[], dict[str, float]]) -> None:
        """Ties a policy's windowed gauges to a function evaluated at scrape time."""
        self.mean_reward.labels(policy).set_function(lambda: window_stats()["mean_reward"])
        self.estimated_regret.labels(policy).set_function(lambda: window_stats()["estimated_regret"])
        self.true_regret_mean.labels(policy).set_function(lambda: window_stats()["true_regret_mean"])
        self.exploration_share.labels(policy).set_function(lambda: window_stats()["exploration_share"])
