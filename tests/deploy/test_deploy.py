"""deploy/: the dashboard, scrape config and alert rules refer to metrics the server really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ltrr.v1 import decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc, retrieval_pb2_grpc
from ltrr_client.client import decide_request, retrieve_request, reward_event
from tests.conftest import ServerThread

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_METRIC = re.compile(r"\bltrr_[a-z_]+")


def _exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana/dashboards/ltrr.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"]]
    exprs += re.findall(r"expr: >?\n?\s*(.+(?:\n\s{10}.+)*)", (DEPLOY / "prometheus/alerts.yml").read_text())
    return exprs


def test_dashboard_and_alerts_use_only_exported_metrics(sqlite_url: str, make_server: object,
                                                        tmp_path: Path) -> None:
    from tests.conftest import retrieval_server_settings

    server: ServerThread = make_server(retrieval_server_settings(sqlite_url, tmp_path))  # type: ignore[operator]
    ch = server.channel()
    d = decisions_pb2_grpc.DecisionServiceStub(ch).Decide(decide_request("demo"))
    r = retrieval_pb2_grpc.RetrievalServiceStub(ch).Retrieve(retrieve_request("retrieval", "mellow jazz"))
    list(feedback_pb2_grpc.FeedbackServiceStub(ch).StreamRewards(
        iter([feedback_pb2.RewardBatch(events=[reward_event(d.event_id, 1.0), reward_event(r.event_id, 0.0)])])))
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        exported = {line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines()
                    if line and not line.startswith("#")}
    used = {m for e in _exprs() for m in _METRIC.findall(e)}
    assert used, "no metrics found in deploy/"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


@pytest.mark.parametrize("args", [
    ["check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
    ["check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
    ["test", "rules", str(DEPLOY / "prometheus/tests/regret_rising.yml")],
])
def test_promtool_accepts_config_and_rules(args: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; CI installs it)")
    out = subprocess.run([promtool, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_is_well_formed() -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/ltrr.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("reward", "regret", "exploration", "latency", "learner lag"):
        assert topic in titles, topic
