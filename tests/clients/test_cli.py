"""The `ltrr` command against a real server, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerThread
from tests.helpers import rows


def ltrr(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ltrr_client.cli", *args], capture_output=True, text=True,
                          input=input_text, timeout=60)


def test_decide_then_reward(server: ServerThread) -> None:
    out = ltrr("decide", "--target", server.target, "--context", '{"user": {"segment": "s1"}}')
    assert out.returncode == 0, out.stderr
    decision = json.loads(out.stdout)
    assert decision["chosen_action_id"] in {"news", "sports", "music", "movies"}
    out = ltrr("reward", "--target", server.target, decision["event_id"], "1.5")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "REWARD_STATUS_ACCEPTED"
    assert [r["value"] for r in rows(server.settings.db_url, "rewards")] == [1.5]


def test_errors_are_reported_with_their_status(server: ServerThread) -> None:
    out = ltrr("decide", "--target", server.target, "--policy", "ghost")
    assert out.returncode == 1
    assert "NOT_FOUND" in out.stderr and "ghost" in out.stderr


def test_stream_rewards_from_jsonl_reports_bad_lines(server: ServerThread, tmp_path: Path) -> None:
    ids = [json.loads(ltrr("decide", "--target", server.target).stdout)["event_id"] for _ in range(3)]
    f = tmp_path / "rewards.jsonl"
    f.write_text("\n".join([
        json.dumps({"event_id": ids[0], "value": 1}),
        "{not json",
        json.dumps({"event_id": ids[1], "value": 0.5, "reward_id": "click"}),
        json.dumps({"value": 1}),
        json.dumps({"event_id": "ghost", "value": 1}),
        json.dumps({"event_id": ids[2], "value": 0}),
    ]) + "\n")
    out = ltrr("stream-rewards", "--target", server.target, "--batch", "2", str(f))
    assert out.returncode == 1  # some lines could not be read
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary == {"acks": {"REWARD_STATUS_ACCEPTED": 3, "REWARD_STATUS_UNKNOWN_EVENT": 1},
                       "unreadable_lines": 2}
    assert f"{f}:2" in out.stderr and f"{f}:4" in out.stderr
    assert len(rows(server.settings.db_url, "rewards")) == 3


def test_policies_stats(server: ServerThread) -> None:
    out = ltrr("policies", "stats", "demo", "--target", server.target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["policy"] == "demo"
