"""The Python client as its own package: a fresh virtual environment with only ``clients/python``
installed (gRPC and protobuf, nothing of the server) decides, streams rewards and evaluates a
policy against a real server, and its ``ltrr`` has the client commands only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerThread

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"

SCRIPT = """
import json, sys
from ltrr.v1 import admin_pb2, feedback_pb2
from ltrr_client import LtrrClient

with LtrrClient(sys.argv[1]) as c:
    decisions = [c.decide("demo", {"user": {"segment": f"s{i % 3}"}}) for i in range(60)]
    events = [feedback_pb2.RewardEvent(event_id=d.event_id, value=float(d.chosen_action_id == "news"))
              for d in decisions]
    acks = [a.status for batch in c.stream_rewards([events[:30], events[30:]]) for a in batch.acks]
    result = c.evaluate(admin_pb2.EvaluatePolicyRequest(name="demo"))
    print(json.dumps({"acks": acks, "targets": [t.name for t in result.targets],
                      "events": result.events}))
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    if UV.exists():  # the same resolver as the project's, with its cache: seconds instead of a minute
        cmd = [str(UV), "pip", "install", "--quiet", "--python", str(python), str(ROOT / "clients" / "python")]
    else:
        cmd = [str(python), "-m", "pip", "install", "--quiet", str(ROOT / "clients" / "python")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"installing clients/python failed: {out.stderr[-2000:]}")
    return venv


def test_only_grpc_and_protobuf_come_with_it(client_venv: Path) -> None:
    probe = ("import importlib.util as u; print([m for m in ('ltrr_server', 'vowpal_wabbit_next', 'pecos', "
             "'tantivy', 'usearch', 'sklearn', 'numpy', 'grpc', 'google.protobuf', 'ltrr_client', 'ltrr.v1') "
             "if u.find_spec(m)])")
    out = subprocess.run([str(client_venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=client_venv)
    assert json.loads(out.stdout.replace("'", '"')) == ["grpc", "google.protobuf", "ltrr_client", "ltrr.v1"]


def test_a_client_only_install_decides_streams_rewards_and_evaluates(client_venv: Path, server: ServerThread) -> None:
    out = subprocess.run([str(client_venv / "bin" / "python"), "-c", SCRIPT, server.target], capture_output=True,
                         text=True, timeout=120, cwd=client_venv)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["acks"] == [1] * 60  # REWARD_STATUS_ACCEPTED, each once committed
    assert "live" in " ".join(result["targets"]) and result["events"] >= 1


def test_its_ltrr_command_has_the_client_commands_only(client_venv: Path, server: ServerThread) -> None:
    ltrr = shutil.which("ltrr", path=str(client_venv / "bin"))
    assert ltrr is not None
    helped = subprocess.run([ltrr, "--help"], capture_output=True, text=True, timeout=60)
    commands = set(helped.stdout.split("{", 1)[1].split("}", 1)[0].split(","))
    assert {"decide", "reward", "stream-rewards", "search", "eval", "policies"} <= commands
    assert not commands & {"serve", "ingest", "train", "keys", "db", "simulate"}
    out = subprocess.run([ltrr, "decide", "--policy", "demo", "--target", server.target], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["event_id"], out.stderr
    refused = subprocess.run([ltrr, "serve"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "invalid choice: 'serve'" in refused.stderr and "Traceback" not in refused.stderr


def test_idempotent_calls_are_retried_with_backoff_and_decisions_are_not() -> None:
    import time

    import grpc

    from ltrr_client.client import LtrrClient

    def refused_after(retries: int, call: str) -> float:
        with LtrrClient("127.0.0.1:1", timeout=5, retries=retries) as c:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                c.stats("demo") if call == "stats" else c.decide("demo")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            return time.monotonic() - started

    # Four backoffs of up to 0.1, 0.2, 0.4 and 0.8 s (gRPC draws each uniformly below its bound).
    assert refused_after(5, "stats") > 2 * refused_after(1, "stats") + 0.05
    assert refused_after(5, "decide") < 0.1  # a decision is never repeated: it would be a second one
