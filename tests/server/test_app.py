"""The served extras: health checking, reflection, and the Prometheus endpoint."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import ltrr_server
from ltrr.v1 import decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from ltrr_client.client import decide_request, reward_event
from tests.conftest import ServerThread

METRICS = [
    "ltrr_rpc_duration_seconds_bucket", "ltrr_decisions_total", "ltrr_explored_decisions_total",
    "ltrr_rewards_total", "ltrr_joined_events_total", "ltrr_learned_events_total", "ltrr_reward_mean",
    "ltrr_estimated_regret", "ltrr_true_regret_total", "ltrr_true_regret_mean", "ltrr_exploration_share",
    "ltrr_model_version", "ltrr_learner_lag_events", "ltrr_learner_lag_seconds", "ltrr_db_write_seconds_bucket",
    "ltrr_pending_joins", "ltrr_write_queue_rows",
]


def test_health_and_reflection(server: ServerThread) -> None:
    ch = server.channel()
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "ltrr.v1.DecisionService", "ltrr.v1.FeedbackService", "ltrr.v1.AdminService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    [resp] = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"ltrr.v1.DecisionService", "ltrr.v1.FeedbackService", "ltrr.v1.AdminService",
            "grpc.health.v1.Health"} <= names


def scrape(server: ServerThread) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        return str(r.read().decode())


def test_metrics_endpoint_exposes_the_learning_loop(server: ServerThread) -> None:
    ch = server.channel()
    dec = decisions_pb2_grpc.DecisionServiceStub(ch)
    events = [reward_event(dec.Decide(decide_request("demo")).event_id, 1.0, oracle_best=1.0, oracle_chosen=0.4)
              for _ in range(20)]
    list(feedback_pb2_grpc.FeedbackServiceStub(ch).StreamRewards(iter([feedback_pb2.RewardBatch(events=events)])))
    text = scrape(server)
    for name in METRICS:
        assert name in text, name
    assert 'ltrr_decisions_total{policy="demo"} 20.0' in text
    [build] = [line for line in text.splitlines() if line.startswith("ltrr_build_info{")]
    assert f'version="{ltrr_server.__version__}"' in build and 'vowpal_wabbit_next="0.' in build
    assert build.endswith(" 1.0")
    assert 'ltrr_rewards_total{outcome="accepted",policy="demo"} 20.0' in text
    assert 'ltrr_rpc_duration_seconds_count{code="OK",method="Decide"} 20.0' in text
    [regret] = [float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('ltrr_true_regret_total{policy="demo"}')]
    assert regret == pytest.approx(20 * (1.0 - 0.4))


def test_promtool_accepts_the_live_metrics(server: ServerThread) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; CI installs it)")
    decisions_pb2_grpc.DecisionServiceStub(server.channel()).Decide(decide_request("demo"))
    out = subprocess.run([promtool, "check", "metrics"], input=scrape(server), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("metrics_host,bound", [("", "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_the_metrics_endpoint_binds_where_grpc_binds_unless_told_otherwise(
    make_server: object, sqlite_url: str, metrics_host: str, bound: str
) -> None:
    from tests.conftest import server_settings

    server: ServerThread = make_server(server_settings(sqlite_url, metrics_host=metrics_host))  # type: ignore[operator]
    assert server.settings.grpc_host == "127.0.0.1"
    assert server.server.metrics_http.server_address[0] == bound
    assert "ltrr_component_up" in scrape(server)
