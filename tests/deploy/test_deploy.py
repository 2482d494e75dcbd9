"""deploy/: the dashboard, scrape config and alert rules refer to metrics the server really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ltrr.v1 import decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc, retrieval_pb2_grpc, search_pb2_grpc
from ltrr_client.client import decide_request, retrieve_request, reward_event, search_request
from tests.conftest import ServerThread
from tests.helpers import wait_for

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
    s = search_pb2_grpc.SearchServiceStub(ch).Search(search_request("retrieval", "mellow jazz"))
    list(feedback_pb2_grpc.FeedbackServiceStub(ch).StreamRewards(iter([feedback_pb2.RewardBatch(events=[
        reward_event(d.event_id, 1.0), reward_event(r.event_id, 0.0), reward_event(s.event_id, 0.0)])])))
    wait_for(lambda: server.core.rewards.stats()["pending_joins"] == 0, what="the search page joined")
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        exported = {line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines()
                    if line and not line.startswith("#")}
    used = {m for e in _exprs() for m in _METRIC.findall(e)}
    assert used, "no metrics found in deploy/"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


@pytest.mark.parametrize("args", [
    ["promtool", "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
    ["promtool", "check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
    ["promtool", "test", "rules", str(DEPLOY / "prometheus/tests/regret_rising.yml")],
    ["promtool", "test", "rules", str(DEPLOY / "prometheus/tests/targets.yml")],
    ["amtool", "check-config", str(DEPLOY / "alertmanager/alertmanager.yml")],
])
def test_promtool_accepts_config_and_rules(args: list[str]) -> None:
    tool = shutil.which(args[0])
    if tool is None:
        pytest.skip(f"{args[0]} not installed (Debian: prometheus, prometheus-alertmanager; CI installs them)")
    out = subprocess.run([tool, *args[1:]], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_is_well_formed() -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/ltrr.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("reward", "regret", "exploration", "latency", "learner lag"):
        assert topic in titles, topic
    # It imports into an existing Grafana: every query names the datasource variable, not a uid.
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"

    def sources(node: object) -> list[dict[str, str]]:
        if isinstance(node, dict):
            here = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
            return here + [s for v in node.values() for s in sources(v)]
        return [s for v in node for s in sources(v)] if isinstance(node, list) else []

    used = sources(dash["panels"]) + sources([v for v in variables.values() if v["type"] != "datasource"])
    assert used and all(s["uid"] == "${datasource}" for s in used), {s["uid"] for s in used}
    # Seconds and counts never share an axis: a panel whose queries mix them gives one its own unit.
    for panel in dash["panels"]:
        exprs = [t["expr"] for t in panel.get("targets", [])]
        if any("_seconds" in e for e in exprs) and any("_seconds" not in e for e in exprs):
            assert panel["fieldConfig"]["overrides"], panel["title"]
