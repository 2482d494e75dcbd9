"""Every ltrr metric, registered on an injected registry (no globals: each test builds its own)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


BUILD_PACKAGES = {"vowpal_wabbit_next": "vowpal-wabbit-next", "libpecos": "libpecos", "grpcio": "grpcio",
                  "protobuf": "protobuf"}


def build_labels() -> dict[str, str]:
    """ltrr_build_info's labels: ltrr's version, Python's, and the learning and serving libraries'.

    >>> labels = build_labels()
    >>> labels["version"] == __import__("ltrr_server").__version__, sorted(labels)[:3]
    (True, ['grpcio', 'libpecos', 'protobuf'])
    """
    import platform
    from importlib import metadata

    from ltrr_server import __version__

    out = {"version": __version__, "python": platform.python_version()}
    for label, package in BUILD_PACKAGES.items():
        try:
            out[label] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[label] = ""
    return out


class Metrics:
    """The server's metrics. Per-policy gauges that are computed on scrape use ``watch_policy``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[object, ...], Any] = {}
        self.build = Info("ltrr_build", "The running ltrr's version and those of the libraries that learn and serve "
                                        "(1 always: join on it, or read the labels after an upgrade).",
                          registry=registry)
        self.build.info(build_labels())
        self.rpc_duration = RpcLatency(
            "ltrr_rpc_duration_seconds", "Server-side RPC (or stream message) handling time.",
            _LATENCY_BUCKETS, registry,
        )
        self.decisions = PolicyCounts(
            "ltrr_decisions", "Decisions made.", "decisions", registry,
        )
        self.explored = PolicyCounts(
            "ltrr_explored_decisions", "Decisions that drew an action other than the model's greedy one "
            "(an apprentice explores none).", "explored", registry,
        )
        self.greedy = PolicyCounts(
            "ltrr_greedy_decisions", "Decisions that served the model's greedy action (an apprentice's: "
            "those where it agreed with the baseline).", "greedy", registry,
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
        self.models_rejected = Counter(
            "ltrr_models_rejected", "Learned models not published because a weight was NaN or infinite "
            "(the learner went back to the last one published).", ["policy"], registry=registry,
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
        self.component_up = Gauge(
            "ltrr_component_up",
            "1 while a supervised background part runs (writer, writer_process, learner, joins, tracing, ...).",
            ["component"], registry=registry,
        )
        self.service_serving = Gauge(
            "ltrr_service_serving", "1 while a gRPC service reports SERVING on grpc.health.v1.",
            ["service"], registry=registry,
        )
        self.component_restarts = Counter(
            "ltrr_component_restarts", "Background parts restarted by the supervisor after they died.",
            ["component"], registry=registry,
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
        self.db_rows_refused = Counter(
            "ltrr_db_rows_refused", "Rows the database refused (their callers were told; nothing else failed).",
            registry=registry,
        )
        self.journal_replayed_rows = Counter(
            "ltrr_journal_replayed_rows", "Rows a start found in the journal of a server that died (decisions "
            "answered before their commit), committed before serving.", registry=registry,
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
        self.ranking_duration = Histogram(
            "ltrr_ranking_duration_seconds", "Time to rank one Search's union into its page (features, scores, "
            "exploration).", ["policy"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.search_pages = Counter(
            "ltrr_search_pages", "Joined Search pages: an engaged item on the page, or not, and whether the ranker "
            "learned it (baseline orders are not learned).", ["policy", "result", "learned"], registry=registry,
        )
        self.ranking_failures = Counter(
            "ltrr_ranking_failures", "Joined Search pages the ranker could not learn (logged with the error).",
            ["policy"], registry=registry,
        )
        self.examination = Gauge(
            "ltrr_ranker_examination", "The estimated probability that a user examines each position of the page "
            "(from the ranker's randomized swaps; position 1 is 1).", ["policy", "position"], registry=registry,
        )
        # Security (api/auth.py). Tenants are made only by admins (with keys): a bounded label.
        self.auth_refusals = Counter(
            "ltrr_auth_refusals", "Calls refused by authentication: no key, a wrong or revoked key, a missing role.",
            ["reason"], registry=registry,
        )
        for reason in ("missing", "wrong", "scheme", "role"):  # exported at 0 before the first refusal
            self.auth_refusals.labels(reason)
        self.quota_exceeded = Counter(
            "ltrr_quota_exceeded", "Calls refused (or stream messages delayed) past a key's quota.",
            ["tenant", "quota"], registry=registry,
        )
        for quota in ("decisions", "rewards", "streams"):  # the default tenant's, exported at 0 from the start
            self.quota_exceeded.labels("default", quota)
        self.pruned_events = Counter(
            "ltrr_pruned_events", "Decisions (with their rewards and joins) pruned from the event log by the "
            "policy's retention_days.", ["policy"], registry=registry,
        )
        self.insecure = Gauge(
            "ltrr_insecure", "1 while gRPC is bound beyond loopback with no authentication (--insecure).",
            registry=registry,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: on the hot paths the look-up costs more than the update."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_duration.observe(method, code, seconds)

    def watch_policy(
        self, policy: str, window_stats: Callable[[], dict[str, float]], counts: dict[str, int]
    ) -> None:
        """Ties a policy's windowed gauges to a function evaluated at scrape time, and its counters
        to the counts the decision path keeps."""
        self.decisions.watch(policy, counts)
        self.explored.watch(policy, counts)
        self.greedy.watch(policy, counts)
        self.mean_reward.labels(policy).set_function(lambda: window_stats()["mean_reward"])
        self.estimated_regret.labels(policy).set_function(lambda: window_stats()["estimated_regret"])
        self.true_regret_mean.labels(policy).set_function(lambda: window_stats()["true_regret_mean"])
        self.exploration_share.labels(policy).set_function(lambda: window_stats()["exploration_share"])


class PolicyCounts:
    """A counter by policy whose values the decision path keeps itself (``PolicyRuntime.counts``,
    which survive policy updates) and the registry reads at scrape time: a labelled Counter's
    ``inc`` costs a look-up and a lock on every decision.

    >>> registry = CollectorRegistry()
    >>> decisions = PolicyCounts("x_decisions", "Decisions made.", "decisions", registry)
    >>> counts = {"decisions": 2}
    >>> decisions.watch("demo", counts)
    >>> counts["decisions"] += 1
    >>> registry.get_sample_value("x_decisions_total", {"policy": "demo"})
    3.0
    """

    def __init__(self, name: str, documentation: str, key: str, registry: CollectorRegistry) -> None:
        self._name, self._documentation, self._key = name, documentation, key
        self._counts: dict[str, dict[str, int]] = {}
        registry.register(self)

    def watch(self, policy: str, counts: dict[str, int]) -> None:
        self._counts[policy] = counts

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, labels=["policy"])

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=["policy"])
        for policy, counts in list(self._counts.items()):
            family.add_metric([policy], float(counts.get(self._key, 0)))
        yield family


class RpcLatency:
    """A histogram of handling time by method and status code, observed once per call or stream
    message: a prometheus_client Histogram's ``observe`` (a look-up, a lock per bucket update)
    cost five times this. Observed from the event loop only, so the counts need no lock; a
    scrape reads a copy, which may be one observation short in its sum or its buckets.

    >>> registry = CollectorRegistry()
    >>> latency = RpcLatency("x_seconds", "Handling time.", (0.001, 0.01), registry)
    >>> for seconds in (0.0005, 0.001, 0.002, 5.0):
    ...     latency.observe("Decide", "OK", seconds)
    >>> [registry.get_sample_value("x_seconds_bucket", {"method": "Decide", "code": "OK", "le": le})
    ...  for le in ("0.001", "0.01", "+Inf")]
    [2.0, 3.0, 4.0]
    >>> registry.get_sample_value("x_seconds_count", {"method": "Decide", "code": "OK"})
    4.0
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = sorted(buckets)
        self._le = [*map(floatToGoString, self._bounds), "+Inf"]  # the buckets' labels
        # Per (method, code): one count per bucket (the last for +Inf), then the sum.
        self._series: dict[tuple[str, str], list[float]] = {}
        registry.register(self)

    def observe(self, method: str, code: str, seconds: float) -> None:
        series = self._series.get((method, code))
        if series is None:
            series = self._series[(method, code)] = [0] * (len(self._bounds) + 1) + [0.0]
        series[bisect_left(self._bounds, seconds)] += 1  # a bucket counts values up to its bound
        series[-1] += seconds

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=["method", "code"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["method", "code"])
        for (method, code), series in list(self._series.items()):
            counts = list(series)
            cumulative, buckets = 0.0, []
            for bound, n in zip(self._le, counts[:-1], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            family.add_metric([method, code], buckets, counts[-1])
        yield family
