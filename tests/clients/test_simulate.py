"""The acceptance run: `ltrr simulate` against the demo policy learns to near-zero regret."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from dataclasses import replace
from typing import Any

from ltrr_client.simulate import World, run_simulation
from ltrr_server.config import RetrievalSettings, Settings, load_settings


def _demo_policy_alone(sqlite_url: str) -> Settings:
    """The demo's policy as configured; its retrieval catalog and autocomplete model are not needed here."""
    demo = load_settings(env={})
    return replace(demo, db_url=sqlite_url, grpc_host="127.0.0.1", grpc_port=0, metrics_port=0,
                   policies=demo.policies[:1], retrieval=RetrievalSettings(), demo_autocomplete_sessions=0)


def test_world_has_one_clearly_best_action_per_context() -> None:
    w = World(n_segments=6, n_actions=4)
    for s in range(6):
        for p in range(2):
            rates = [w.rate(s, p, a) for a in range(4)]
            assert max(rates) == w.best_rate and rates.index(max(rates)) == w.best_action(s, p)
            assert sorted(rates)[-2] <= 0.15 + 1e-9


def test_demo_policy_regret_is_under_30_percent_of_uniform(make_server: Any, sqlite_url: str) -> None:
    server = make_server(_demo_policy_alone(sqlite_url))
    out = io.StringIO()
    result = asyncio.run(run_simulation(server.target, "demo", events=20_000, out=out))
    print(out.getvalue())
    assert result.uniform_tail_regret > 0.25
    assert result.regret_ratio <= 0.30, out.getvalue()
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        text = r.read().decode()
    for gauge in ("ltrr_estimated_regret{policy=\"demo\"}", "ltrr_true_regret_mean{policy=\"demo\"}",
                  "ltrr_true_regret_total{policy=\"demo\"}"):
        assert gauge in text


def test_a_run_shorter_than_the_tail_reports_over_the_events_it_ran(make_server: Any, sqlite_url: str) -> None:
    server = make_server(_demo_policy_alone(sqlite_url))
    out = io.StringIO()
    result = asyncio.run(run_simulation(server.target, "demo", events=300, report_every=300, out=out))
    assert "last 300 events:" in out.getvalue(), out.getvalue()
    assert result.params["tail"] == 300
    # The tail is the whole run: its regret is the one window's.
    assert abs(result.policy_tail_regret - result.rows[-1]["policy_regret"]) < 1e-9
