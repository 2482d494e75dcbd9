"""The event log over time: retention_days pruned in the background without losing what a restart
replays; ltrr db prune and ltrr db backup; a backup restored into a fresh server."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from ltrr.v1 import admin_pb2, common_pb2
from ltrr_client.cli import main
from ltrr_client.client import LtrrClient
from ltrr_server.config import ActionSpec, PolicySpec
from ltrr_server.log.dsjson import ExportedEvent, to_line
from tests.conftest import ServerThread, demo_policy, server_settings
from tests.helpers import rows, wait_for
from tests.server.api.test_import_export import import_lines

DAY = 86_400.0
ACTIONS = [("a", []), ("b", []), ("c", [])]
PROBES = [{"user": {"segment": f"s{i}"}} for i in range(3)]


def logged(n: int, days_ago: float, prefix: str) -> list[str]:
    """DSJSON lines of ``n`` decisions logged ``days_ago`` days ago (rewarded 1 for 'b')."""
    at = time.time() - days_ago * DAY
    return [to_line(ExportedEvent(f"{prefix}{k}", at + k, [("user", [("segment", f"s{k % 3}")])], ACTIONS,
                                  [[0.2, 0.5, 0.3]], [k % 3], 1.0 if k % 3 == 1 else 0.0)) for k in range(n)]


def policy(**changes: Any) -> PolicySpec:
    return PolicySpec(name="p", exploration="epsilon", epsilon=0.1, interactions=("uA",),
                      actions=tuple(ActionSpec(a) for a, _ in ACTIONS), **changes)


IMPORTED = "(event_id LIKE 'old-%' OR event_id LIKE 'new-%')"


def counts(url: str) -> tuple[int, int, int]:
    """The imported events' decisions, joins and rewards in the log (probes' decisions aside)."""
    return (len(rows(url, "decisions", IMPORTED)), len(rows(url, "joined", IMPORTED)),
            len(rows(url, "rewards", IMPORTED)))


def probabilities(server: ServerThread, name: str = "p") -> list[list[float]]:
    with LtrrClient(server.target) as c:
        return [[round(x.probability, 9) for x in c.decide(name, ctx).probabilities] for ctx in PROBES]


def pruned_metric(server: ServerThread) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        lines = [x for x in r.read().decode().splitlines() if x.startswith('ltrr_pruned_events_total{policy="p"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_old_events_are_pruned_in_the_background_but_never_what_a_restart_replays(
    make_server: Any, db_url: str,
) -> None:
    settings = server_settings(db_url, policy(retention_days=2), prune_interval_seconds=0.2)
    server = make_server(settings)
    imported = import_lines(server, "p", logged(60, 10, "old-") + logged(30, 0.5, "new-"), batch=30)
    assert sum(r.imported for r in imported) == 90
    with LtrrClient(server.target) as c:
        wait_for(lambda: c.stats("p").learned == 90, timeout=20, what="the imported events learned")
    # Old, but after the latest snapshot (the policy's first): a restart replays them, so they stay.
    time.sleep(0.8)
    assert counts(db_url) == (90, 90, 90) and pruned_metric(server) == 0
    with LtrrClient(server.target) as c:
        c.snapshot("p")
    wait_for(lambda: counts(db_url) == (30, 30, 30), timeout=10, what="the old events pruned")
    assert {d["event_id"][:4] for d in rows(db_url, "decisions", "policy = 'p'")} == {"new-"}
    assert pruned_metric(server) == 60
    before = probabilities(server)
    server.stop()
    # The restart starts from the snapshot the pruning kept and replays what came after it.
    again = make_server(settings)
    assert probabilities(again) == before
    with LtrrClient(again.target) as c:
        assert c.get_policy("p").spec.retention_days == 2


def test_a_retention_change_keeps_the_model_and_zero_keeps_everything(make_server: Any, sqlite_url: str) -> None:
    server = make_server(server_settings(sqlite_url, policy(), prune_interval_seconds=0.2))
    import_lines(server, "p", logged(30, 10, "old-"), batch=30)
    with LtrrClient(server.target) as c:
        wait_for(lambda: c.stats("p").learned == 30, timeout=20, what="learned")
        c.snapshot("p")
        time.sleep(0.6)
        assert counts(sqlite_url) == (30, 30, 30)  # retention_days 0: forever
        spec = c.get_policy("p").spec
        spec.retention_days = 3
        changed = c.update_policy(spec)
        assert not changed.model_reset  # not a learning parameter: the model is kept
    wait_for(lambda: counts(sqlite_url) == (0, 0, 0), timeout=10, what="pruned after the change")


@pytest.mark.parametrize("days", [-1, float("nan"), 40_000])
def test_bad_retention_names_the_field(days: float, make_server: Any, sqlite_url: str) -> None:
    server = make_server(server_settings(sqlite_url))
    with LtrrClient(server.target) as c, pytest.raises(grpc.RpcError) as err:
        c.create_policy(admin_pb2.PolicySpec(name="r", retention_days=days,
                                             actions=[common_pb2.Action(id="a")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("spec.retention_days")


def test_db_prune_and_backup_from_the_command_line(make_server: Any, sqlite_url: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A backup taken while the server runs restores into a fresh server: the same policies, the same
    model, the same log; ltrr db prune then prunes the copy by --older-than-days."""
    settings = server_settings(sqlite_url, demo_policy(), policy())
    server = make_server(settings)
    import_lines(server, "p", logged(40, 10, "old-") + logged(20, 0, "new-"), batch=30)
    with LtrrClient(server.target) as c:
        wait_for(lambda: c.stats("p").learned == 60, timeout=20, what="learned")
        c.snapshot("p")
    before = probabilities(server)
    copy = tmp_path / "copy.db"
    assert main(["db", "backup", str(copy), "--db", sqlite_url]) == 0  # the server still running
    made = json.loads(capsys.readouterr().out)
    assert made["path"] == str(copy) and made["bytes"] == copy.stat().st_size > 0
    assert main(["db", "backup", str(copy), "--db", sqlite_url]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    server.stop()

    copy_url = f"sqlite:///{copy}"
    restored = make_server(server_settings(copy_url, demo_policy(), policy()))
    assert probabilities(restored) == before
    assert counts(copy_url) == counts(sqlite_url) == (60, 60, 60)
    restored.stop()

    assert main(["db", "prune", "--db", copy_url, "--policy", "p", "--older-than-days", "5"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert (result["policy"], result["events"], result["kept_for_replay"]) == ("p", 40, 0)
    assert counts(copy_url) == (20, 20, 20) and counts(sqlite_url) == (60, 60, 60)
    assert main(["db", "prune", "--db", copy_url]) == 0  # no retention_days and no --older-than-days
    assert all("skipped" in r for r in json.loads(capsys.readouterr().out))
    assert main(["db", "prune", "--db", copy_url, "--policy", "nope"]) == 2
    assert main(["db", "backup", str(tmp_path / "pg.dump"), "--db", "postgresql://u@h/db"]) == 2
    assert "pg_dump --format=custom" in capsys.readouterr().err


def test_a_pruned_search_event_takes_its_page_along(sqlite_url: str) -> None:
    import sqlalchemy as sa

    from ltrr_server.log import db
    from ltrr_server.log import schema as t
    from ltrr_server.log.retention import prune_policy, retention_cutoff

    engine = db.create_engine(sqlite_url)
    db.migrate(engine)
    old, now = time.time() - 10 * DAY, time.time()
    with engine.begin() as conn:
        conn.execute(t.policies.insert().values(name="r", spec="{}", revision=1, lineage=1, lineage_start_seq=0,
                                                created_at=old, updated_at=old))
        for seq, (event, at) in enumerate((("old-1", old), ("new-1", now)), 1):
            conn.execute(t.decisions.insert().values(
                event_id=event, policy="r", lineage=1, created_at=at, deadline=at + 30, context="[]", actions="[]",
                probabilities="[[1.0]]", chosen="[0]", explored=False, model_version=1, learn=True))
            conn.execute(t.joined.insert().values(seq=seq, event_id=event, policy="r", reward=1.0, n_rewards=1,
                                                  source="reward", joined_at=at))
            conn.execute(t.pages.insert().values(
                event_id=event, policy="r", created_at=at, ranker="online", ranker_version=1, probability=0.9,
                swapped=None, user_id="", items='["a"]', features='{"names": [], "rows": [[]], "kinds": [""]}',
                learn=True))
        conn.execute(t.snapshots.insert().values(policy="r", lineage=1, model_version=2, last_joined_seq=2,
                                                 trigger="test", created_at=now, size_bytes=1, model=b"x"))
    assert prune_policy(engine, "r", retention_cutoff(2)).events == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.pages.c.event_id)).scalars().all() == ["new-1"]
