"""The `ltrr` command against a real server, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerThread, retrieval_server_settings
from tests.helpers import dsjson_line, rows


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


def test_search_prints_every_field_of_every_result_even_a_zero_score(make_server: Any, db_url: str,
                                                                      tmp_path: Path) -> None:
    s = make_server(retrieval_server_settings(db_url, tmp_path / "data"))
    out = ltrr("search", "mellow jazz", "--target", s.target, "--page-size", "3", "--plan", "lexical=10")
    assert out.returncode == 0, out.stderr
    page = json.loads(out.stdout)
    assert len(page["results"]) == 3 and page["ranker"] == "online"
    # A fresh online ranker scores every candidate 0: protobuf's JSON would leave "score" out.
    assert all({"item_id", "score", "position", "hits"} <= set(r) for r in page["results"])


def test_errors_are_reported_with_their_status(server: ServerThread) -> None:
    out = ltrr("decide", "--target", server.target, "--policy", "ghost")
    assert out.returncode == 1
    assert "NOT_FOUND" in out.stderr and "ghost" in out.stderr


def test_stream_rewards_from_jsonl_reports_bad_lines(server: ServerThread, tmp_path: Path) -> None:
    ids = [json.loads(ltrr("decide", "--target", server.target).stdout)["event_id"] for _ in range(3)]
    f = tmp_path / "rewards.jsonl"
    # As a Windows tool writes it (a byte order mark, CRLF). Found from outside: a line not
    # UTF-8 or not a JSON object ended the whole stream (UNKNOWN), and the mark cost line 1.
    f.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([
        json.dumps({"event_id": ids[0], "value": 1}).encode(),
        b"{not json",
        json.dumps({"event_id": ids[1], "value": 0.5, "reward_id": "click"}).encode(),
        json.dumps({"value": 1}).encode(),
        b"[1, 2]",
        b'{"event_id": "\xff"}',
        json.dumps({"event_id": ids[1], "value": 1, "reward_id": "buy", "engaged_item_ids": 5}).encode(),
        b"",
        json.dumps({"event_id": "ghost", "value": 1}).encode(),
        json.dumps({"event_id": ids[2], "value": 0}).encode(),
    ]) + b"\r\n")
    out = ltrr("stream-rewards", "--target", server.target, "--batch", "2", str(f))
    assert out.returncode == 1  # some lines could not be read
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary == {"acks": {"REWARD_STATUS_ACCEPTED": 3, "REWARD_STATUS_UNKNOWN_EVENT": 1},
                       "unreadable_lines": 5}, out.stderr
    assert [line.split(": ")[0] for line in out.stderr.splitlines() if line.startswith("skipped")] == [
        f"skipped {f}:{n}" for n in (2, 4, 5, 6, 7)]
    assert "not UTF-8" in out.stderr and "a JSON object is needed, got list" in out.stderr
    assert len(rows(server.settings.db_url, "rewards")) == 3


def test_policies_stats(server: ServerThread) -> None:
    out = ltrr("policies", "stats", "demo", "--target", server.target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["policy"] == "demo"


def test_policies_update_changes_the_fields_named(server: ServerThread) -> None:
    out = ltrr("policies", "update", "demo", "mode=apprentice", "description=shadowing the frontend",
               "--target", server.target)
    assert out.returncode == 0, out.stderr
    changed = json.loads(out.stdout)
    assert changed["spec"]["mode"] == "POLICY_MODE_APPRENTICE" and changed["spec"]["description"] == (
        "shadowing the frontend")
    assert len(changed["spec"]["actions"]) == 4 and changed["lineage"] == "1"  # the rest kept
    assert "model kept" in out.stderr
    out = ltrr("policies", "update", "demo", "learning_rate=0.25", "--target", server.target)
    assert json.loads(out.stdout)["lineage"] == "2" and "model reset" in out.stderr
    for bad, says in ((["mode=sleepy"], "unknown mode 'sleepy' (one of online, apprentice)"),
                      (["learning_rate=fast"], "learning_rate must be a number"),
                      (["colour=red"], "'colour=red' is not FIELD=VALUE with a PolicySpec field"),
                      ([], "ltrr policies update NAME FIELD=VALUE")):
        out = ltrr("policies", "update", "demo", *bad, "--target", server.target)
        assert out.returncode == 2 and says in out.stderr, out.stderr


def test_eval_policy_and_tune(server: ServerThread, tmp_path: Path) -> None:
    from ltrr_client.client import LtrrClient, reward_event
    from tests.helpers import wait_for

    with LtrrClient(server.target) as client:
        events = []
        for i in range(200):
            d = client.decide("demo", {"user": {"segment": f"s{i % 3}"}})
            events.append(reward_event(d.event_id, float(d.chosen_action_id == "news")))
        list(client.stream_rewards([events]))
    wait_for(lambda: len(rows(server.settings.db_url, "joined")) >= 200, timeout=30, what="joins")
    table = tmp_path / "table.json"
    # With a byte order mark, as Notepad writes it (refused as not JSON before 2026-12-01).
    table.write_bytes(b"\xef\xbb\xbf" + json.dumps(
        {"feature": "user.segment", "by_value": {"s1": {"news": 1}}, "default": {"music": 1}}).encode())

    out = ltrr("eval", "policy", "demo", "--server", server.target, "--target", "action:news", "--target",
               f"table:{table}", "--target", "candidate:learning_rate=0.1", "--target", "candidate:optimizer=coin",
               "--estimators", "ips,snips")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("200 joined events of demo")
    news = next(line for line in lines if line.startswith("action:news") and " snips " in line)
    assert float(news.split()[3]) == pytest.approx(1.0)  # news is rewarded 1, always, and nothing else is
    assert any(line.startswith("table:table.json") for line in lines)
    assert any(line.startswith("candidate:learning_rate=0.1") for line in lines)
    assert any(line.startswith("candidate:optimizer=coin") for line in lines)
    assert "evaluated 200/200 events (100%" in out.stderr

    out = ltrr("eval", "policy", "demo", "--json", "--server", server.target)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [t["name"] for t in result["targets"]] == ["live", "uniform"]
    assert set(result["targets"][1]["slots"][0]) >= {"ips", "snips", "dr"}

    out = ltrr("eval", "policy", "demo", "--server", server.target, "--target", "live", "--target", "action:news",
               "--baseline", "live", "--estimators", "snips")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "minus the baseline, paired" in lines[1]
    (live,) = [line for line in lines if line.startswith("live ")]
    assert live.endswith("+0.0000 [+0.0000, +0.0000]"), live

    out = ltrr("tune", "demo", "--server", server.target, "--candidate", "exploration=epsilon,epsilon=0.2",
               "--candidate", "learning_rate=1.0")
    assert out.returncode == 0, out.stderr
    assert "exploration=epsilon,epsilon=0.2" in out.stdout and "not applied:" in out.stdout
    # The live configuration is replayed as well, the yardstick of the paired differences.
    ranked = [line for line in out.stdout.splitlines() if line.startswith(" ") and "exploration=" in line]
    assert "minus the live configuration" in out.stdout and len(ranked) == 3, out.stdout
    (live,) = [line for line in ranked if "learning_rate=0.5" in line and "epsilon=0.1" in line]
    assert "+0.0000 [+0.0000, +0.0000]" in live, out.stdout

    out = ltrr("eval", "policy", "demo", "--server", server.target, "--target", "action:nwes", "--target", "uniform")
    assert out.returncode == 0, out.stderr
    assert ("action:nwes                  not estimated: action 'nwes' was offered by none of the 200 "
            "events") in out.stdout
    out = ltrr("eval", "policy", "demo", "--server", server.target, "--target", "bogus")
    assert out.returncode == 2 and "unknown target 'bogus'" in out.stderr
    out = ltrr("eval", "policy", "demo", "--server", server.target, "--since", "yesterday")
    assert out.returncode == 2 and "ISO 8601" in out.stderr
    out = ltrr("eval", "policy", "ghost", "--server", server.target)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr


def test_a_tuning_schedule_outlives_a_failed_run(server: ServerThread) -> None:
    # Until 2026-12-01, with --every, the first run that failed (here: no joined decisions yet;
    # in production, a server restarting) ended the schedule for good.
    from ltrr.v1 import admin_pb2
    from ltrr_client.client import LtrrClient, reward_event
    from tests.helpers import wait_for

    with LtrrClient(server.target) as client:
        client.create_policy(admin_pb2.PolicySpec(name="sched", actions=[{"id": "a"}, {"id": "b"}]))
    proc = subprocess.Popen([sys.executable, "-m", "ltrr_client.cli", "tune", "sched", "--every", "1s", "--candidate",
                             "learning_rate=1.0", "--server", server.target],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first = next(line for line in proc.stderr if "ltrr tune:" in line)  # after its progress line
        assert "ltrr tune: this run failed, NOT_FOUND: policy 'sched' has no joined decisions" in first, first
        assert first.rstrip().endswith("trying again in 1 s"), first
        with LtrrClient(server.target) as client:
            events = [reward_event(client.decide("sched", {"user": {"segment": "s1"}}).event_id, 1.0)
                      for _ in range(30)]
            list(client.stream_rewards([events]))
        wait_for(lambda: len(rows(server.settings.db_url, "joined", "policy = 'sched'")) >= 30, timeout=30,
                 what="joins")
        table = proc.stdout.readline()
        assert "joined events of sched" in table, table
        assert proc.poll() is None  # and it goes on
    finally:
        proc.kill()
        proc.wait(10)


def test_import_and_export_dsjson(server: ServerThread, tmp_path: Path) -> None:
    from ltrr.v1 import admin_pb2
    from ltrr_client.client import LtrrClient

    fixture = Path(__file__).parents[1] / "fixtures" / "dsjson" / "dsjson_cb.json"
    with LtrrClient(server.target) as c:
        for name in ("coffee", "copy"):
            c.create_policy(admin_pb2.PolicySpec(name=name, exploration=admin_pb2.EXPLORATION_EPSILON))
    bad = tmp_path / "bad.json"
    lines = fixture.read_text().splitlines()
    bad.write_text("\n".join(lines[:4] + ["{oops"] + lines[4:8]) + "\n")

    out = ltrr("import", "dsjson", str(bad), "--policy", "coffee", "--strict", "--target", server.target)
    assert out.returncode == 1 and "line 5: line: not JSON" in out.stderr and "nothing imported" in out.stderr
    assert rows(server.settings.db_url, "decisions", "policy = 'coffee'") == []

    out = ltrr("import", "dsjson", str(bad), "--policy", "coffee", "--batch", "3", "--target", server.target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"imported": 8, "duplicates": 0, "skipped": 1}
    assert "line 5: line: not JSON" in out.stderr

    exported = tmp_path / "out.dsjson"
    out = ltrr("export", "dsjson", "coffee", "--output", str(exported), "--target", server.target)
    assert out.returncode == 0, out.stderr
    assert len(exported.read_text().splitlines()) == 8
    out = ltrr("import", "dsjson", str(exported), "--policy", "copy", "--target", server.target)
    assert json.loads(out.stdout) == {"imported": 0, "duplicates": 8, "skipped": 0}  # event ids are global


def test_import_takes_dsjson_files_as_tools_write_them(server: ServerThread, tmp_path: Path) -> None:
    # Found from outside: a byte order mark lost the first line, a blank line failed --strict,
    # a line not UTF-8 or over 1,000,000 characters ended the whole import, so did lines of a few
    # KB (Personalizer's) at the default --batch (RESOURCE_EXHAUSTED), and --strict could not
    # read standard input twice.
    from ltrr.v1 import admin_pb2
    from ltrr_client.client import LtrrClient

    def renamed(i: int, prefix: str, numbers: int = 0) -> bytes:
        return dsjson_line(i, f"{prefix}{i}", numbers).encode()

    with LtrrClient(server.target) as c:
        c.create_policy(admin_pb2.PolicySpec(name="coffee", exploration=admin_pb2.EXPLORATION_EPSILON))
        # Crossing a context of 900 numbers with itself (the default interactions) makes learning
        # each wide line take seconds, and the server's stop waits up to a minute for the learner
        # to finish them: this policy crosses nothing (no namespace z).
        c.create_policy(admin_pb2.PolicySpec(name="wide", exploration=admin_pb2.EXPLORATION_EPSILON,
                                             interactions=["zA"]))
    odd = tmp_path / "odd.json"
    odd.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([
        renamed(0, "odd"), renamed(1, "odd"), b"", b"  ",  # lines 1-4
        renamed(2, "odd").replace(b"FromUrl", b"From\xfeUrl"),  # 5: not UTF-8
        renamed(3, "odd"), b"{oops",  # 6, 7: the server names 7
        json.dumps({"EventId": "long", "c": "x" * 1_000_001}).encode(),  # 8: too long to send
        renamed(4, "odd"), b"", b""]))

    out = ltrr("import", "dsjson", str(odd), "--policy", "coffee", "--strict", "--target", server.target)
    assert out.returncode == 1 and "3 bad lines: nothing imported" in out.stderr, out.stderr
    assert rows(server.settings.db_url, "decisions", "policy = 'coffee'") == []
    out = ltrr("import", "dsjson", str(odd), "--policy", "coffee", "--target", server.target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"imported": 4, "duplicates": 0, "skipped": 3}
    named = sorted(line.split(":")[1].strip() for line in out.stderr.splitlines() if line.startswith("ltrr import: l"))
    assert named == ["line 5", "line 7", "line 8"], out.stderr  # the file's own numbers
    assert "line 5: line: not UTF-8 (byte 0xfe at byte" in out.stderr
    assert "line 8: line: 1,000,0" in out.stderr and "more than the 1,000,000 a line may have" in out.stderr
    assert sorted(r["event_id"] for r in rows(server.settings.db_url, "decisions", "policy = 'coffee'")) == [
        "odd0", "odd1", "odd3", "odd4"]
    out = subprocess.run([sys.executable, "-m", "ltrr_client.cli", "import", "dsjson", "-", "--policy", "wide",
                          "--target", server.target], capture_output=True, input=odd.read_bytes(), timeout=60)
    assert json.loads(out.stdout) == {"imported": 0, "duplicates": 4, "skipped": 3}  # event ids are global

    # Lines of 11 KB (a context of 900 numbers): 600 of them pass the server's 4 MiB request
    # limit at --batch's default, and 500 (an export's message) the client's.
    wide = b"\n".join(renamed(i, "wide", numbers=900) for i in range(600)) + b"\n"
    assert len(wide) > 6 * 1024 * 1024
    out = subprocess.run([sys.executable, "-m", "ltrr_client.cli", "import", "dsjson", "-", "--policy", "wide",
                          "--strict", "--target", server.target], capture_output=True, input=wide, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"imported": 600, "duplicates": 0, "skipped": 0}
    assert len(rows(server.settings.db_url, "decisions", "policy = 'wide'")) == 600
    exported = tmp_path / "wide.dsjson"
    out = ltrr("export", "dsjson", "wide", "--output", str(exported), "--target", server.target)
    assert out.returncode == 0, out.stderr
    lines = exported.read_text().splitlines()
    assert sorted(json.loads(line)["EventId"] for line in lines) == sorted(f"wide{i}" for i in range(600))
    assert all(len(json.loads(line)["c"]["FromUrl"]) > 900 for line in lines)


@pytest.mark.parametrize("args,names", [
    (["decide", "--context", "{not json"], "--context"),
    (["decide", "--context", '["a", "list"]'], "--context"),
    (["decide", "--context", '{"user": "s1"}'], "--context"),
    (["decide", "--context", '{"user": {"tags": ["a"]}}'], "--context"),
    (["retrieve", "jazz", "--plan", "explore"], "--plan"),
    (["retrieve", "jazz", "--plan", "lexical=ten"], "--plan"),
    (["decide", "--port", "1"], "--port"),
    (["serve", "--host", "0.0.0.0", "--grpc-port", "0", "--metrics-port", "-1"], "--insecure"),
    (["keys", "create", "--db", "sqlite://"], "--role"),
    (["keys", "revoke", "--db", "sqlite://"], "ID"),
])
def test_bad_arguments_get_one_line_naming_them_and_exit_2(args: list[str], names: str) -> None:
    out = ltrr(*args)
    assert out.returncode == 2, out
    assert names in out.stderr and "Traceback" not in out.stderr, out.stderr


# Every command, fed what a user gets wrong; run in this process (a subprocess each would cost
# seconds of imports): exit code 2, one message naming the argument, never a traceback.
_NOWHERE = "127.0.0.1:1"


@pytest.mark.parametrize("args,names", [
    (["decide", "--slots", "-1", "--target", _NOWHERE], "--slots"),
    (["decide", "--context", "{", "--target", _NOWHERE], "--context"),
    (["reward", "e1", "lots", "--target", _NOWHERE], "value"),
    (["stream-rewards", "/no/such.jsonl", "--target", _NOWHERE], "file"),
    (["stream-rewards", "-", "--batch", "0", "--target", _NOWHERE], "--batch"),
    (["simulate", "--events", "-5", "--target", _NOWHERE], "--events"),
    (["simulate", "--mode", "chaos", "--target", _NOWHERE], "--mode"),
    (["retrieve", "jazz", "--limit", "x", "--target", _NOWHERE], "--limit"),
    (["search", "jazz", "--page-size", "0", "--target", _NOWHERE], "--page-size"),
    (["search", "jazz", "--order", "random", "--target", _NOWHERE], "--order"),
    (["search", "jazz", "--plan", "vector", "--target", _NOWHERE], "--plan"),
    (["simulate", "--mode", "search", "--eta", "-1", "--target", _NOWHERE], "--eta"),
    (["train", "ranker", "--trees", "0", "--db", "sqlite://"], "--trees"),
    (["train", "ranker", "--since", "banana", "--db", "sqlite://"], "--since"),
    (["train", "ranker", "--db", "sqlite://"], "no logged pages"),
    (["ingest", "catalog", "/no/such.jsonl", "--db", "sqlite://"], "file"),
    (["ingest", "songs", "x.jsonl"], "what"),
    (["train", "xmr", "--pairs", "/no/such.jsonl", "--db", "sqlite://"], "--pairs"),
    (["train", "xmr", "--demo-pairs", "0", "--db", "sqlite://"], "--demo-pairs"),
    (["train", "xmr", "--congruent", "-1", "--demo-pairs", "100", "--db", "sqlite://"], "congruent"),
    (["train", "xmr", "--pairs", "a", "--demo-pairs", "3"], "--demo-pairs"),
    (["register", "xmr", "folder"], "--name"),
    (["complete", "ab", "--k", "0", "--target", _NOWHERE], "--k"),
    (["eval", "policy"], "NAME"),
    (["eval", "xmr", "--limit", "-1"], "--limit"),
    (["tune", "p", "--since", "banana", "--server", _NOWHERE], "ISO 8601"),
    (["tune", "p", "--every", "soon", "--server", _NOWHERE], "--every"),
    (["models", "promote", "--target", _NOWHERE], "NAME VERSION"),
    (["models", "promote", "m", "-2", "--target", _NOWHERE], "version"),
    (["xmr", "--target", _NOWHERE], "queries"),
    (["export", "dsjson", "p", "--since", "yesterday", "--target", _NOWHERE], "ISO 8601"),
    (["import", "dsjson", "/no/such.jsonl", "--policy", "p", "--target", _NOWHERE], "file"),
    (["import", "dsjson", "-", "--target", _NOWHERE], "--policy"),
    (["keys", "create", "--role", "root", "--db", "sqlite://"], "--role"),
    (["keys", "create", "--role", "admin", "--max-streams", "-1", "--db", "sqlite://"], "--max-streams"),
    (["audit", "--since", "banana", "--db", "sqlite://"], "--since"),
    (["db", "backup", "--db", "sqlite://"], "OUT"),
    (["db", "prune", "--db", "sqlite://", "--policy", "nope"], "--policy"),
    (["db", "vacuum"], "action"),
    (["db", "prune", "--db", "sqlite://", "--older-than-days", "-1"], "--older-than-days"),
    (["db", "backup", "/no/such/dir/copy.db", "--db", "sqlite:////no/such.db"], "out"),
    (["db", "backup", "copy.db", "--db", "sqlite:////no/such.db"], "no database file"),
    (["policies", "drop", "--target", _NOWHERE], "action"),
    (["serve", "--config", "/no/such.toml"], "config"),
    (["serve", "--log-level", "loud"], "--log-level"),
    (["serve", "--grpc-port", "many"], "--grpc-port"),
    (["frobnicate"], "frobnicate"),
])
def test_every_command_answers_bad_arguments_in_one_line(args: list[str], names: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from ltrr_client.cli import main

    code = main(args)  # argparse's own refusals too: main() returns a code, never exits
    err = capsys.readouterr().err
    assert code == 2, err
    assert names in err and "Traceback" not in err, err


def test_every_command_and_argument_says_what_it_is() -> None:
    import argparse

    from ltrr_client.cli import build_parser

    silent = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                silent.extend(f"{path} {name}" for name in action.choices if name not in helped)
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
                silent.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "ltrr")
    assert not silent, silent


def test_version_and_the_target_from_the_environment(server: ServerThread) -> None:
    out = ltrr("--version")
    assert out.returncode == 0 and out.stdout.startswith("ltrr ")
    env = {**__import__("os").environ, "LTRR_TARGET": server.target}
    done = subprocess.run([sys.executable, "-m", "ltrr_client.cli", "policies", "list"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0 and "demo" in done.stdout, done.stderr


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback(server: ServerThread) -> None:
    cli = subprocess.Popen([sys.executable, "-m", "ltrr_client.cli", "policies", "get", "--target", server.target],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cli.stdout is not None and cli.stderr is not None
    cli.stdout.close()  # as `| head -0` does
    err = cli.stderr.read().decode()
    assert cli.wait(60) == 0 and "Traceback" not in err, err


def test_import_batches_weigh_lines_in_bytes_as_read(tmp_path: Path) -> None:
    # A line of 600 ASCII characters, then lines of 300 two-byte ones (602 bytes each): until
    # 2026-12-01 a batch weighed the next line in characters (902 of 1,000 here, so 1,202 bytes
    # went together), and encoded each line again to weigh it.
    from ltrr_client.cli import _ImportFile

    ascii_line, wide_line = '"' + "a" * 598 + '"', '"' + "é" * 300 + '"'
    path = tmp_path / "wide.json"
    path.write_text(f"{ascii_line}\r\n{wide_line}\r\n{wide_line}\n", encoding="utf-8")
    assert list(_ImportFile(str(path), twice=False).batches(100, max_bytes=1000)) == [
        (1, [ascii_line]), (2, [wide_line]), (3, [wide_line])]
    assert list(_ImportFile(str(path), twice=False).batches(100, max_bytes=1300)) == [
        (1, [ascii_line, wide_line]), (3, [wide_line])]
