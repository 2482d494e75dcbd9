"""AdminService: create, update, list, describe, snapshot, statistics; all of it persists."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from ltrr.v1 import admin_pb2, admin_pb2_grpc, common_pb2, decisions_pb2_grpc, feedback_pb2_grpc
from ltrr_client.client import decide_request, reward_event
from tests.conftest import ServerThread, demo_policy, server_settings
from tests.helpers import rows, wait_for


def admin(server: ServerThread) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(server.channel())


def ccb_spec(name: str = "rows", **kw: object) -> admin_pb2.PolicySpec:
    fields: dict[str, object] = dict(
        name=name, kind=admin_pb2.POLICY_KIND_CCB, exploration=admin_pb2.EXPLORATION_EPSILON, epsilon=0.2,
        actions=[common_pb2.Action(id=a) for a in ("a", "b", "c", "d")], slots=3, join_window_seconds=5,
        aggregation=admin_pb2.AGGREGATION_SUM)
    return admin_pb2.PolicySpec(**(fields | kw))  # type: ignore[arg-type]


def test_create_describe_list_and_decide_multi_slot(server: ServerThread) -> None:
    a = admin(server)
    created = a.CreatePolicy(admin_pb2.CreatePolicyRequest(spec=ccb_spec()))
    assert (created.spec.name, created.revision, created.lineage) == ("rows", 1, 1)
    assert a.GetPolicy(admin_pb2.GetPolicyRequest(name="rows")).spec.slots == 3
    assert [p.spec.name for p in a.ListPolicies(admin_pb2.ListPoliciesRequest()).policies] == ["demo", "rows"]

    resp = decisions_pb2_grpc.DecisionServiceStub(server.channel()).Decide(decide_request("rows"))
    chosen = [s.chosen_action_id for s in resp.slots]
    assert len(chosen) == 3 and len(set(chosen)) == 3
    for slot in resp.slots:
        assert sum(p.probability for p in slot.probabilities) == pytest.approx(1.0)
        assert slot.probability == pytest.approx(
            {p.action_id: p.probability for p in slot.probabilities}[slot.chosen_action_id])


def test_every_action_left_off_the_earlier_slots_can_fill_the_next(server: ServerThread) -> None:
    """VW's own multi-slot prediction leaves out of later slots the action it ranked first in the
    earlier ones, not the one drawn there: whenever the first slot explored, that action, the one
    the model rates best, could be in no slot of the page."""
    a = admin(server)
    a.CreatePolicy(admin_pb2.CreatePolicyRequest(spec=ccb_spec(actions=[common_pb2.Action(id=x) for x in "abcde"])))
    dec = decisions_pb2_grpc.DecisionServiceStub(server.channel())
    for _ in range(40):
        resp = dec.Decide(decide_request("rows"))
        shown: list[str] = []
        for slot in resp.slots:
            dist = {p.action_id: p.probability for p in slot.probabilities}
            # epsilon 0.2 over what is left: each free action at least 0.2 / 5.
            assert {x for x, p in dist.items() if p > 0} == set("abcde") - set(shown), (shown, dist)
            shown.append(slot.chosen_action_id)


@pytest.mark.parametrize("spec,field", [
    (admin_pb2.PolicySpec(name="bad name!"), "spec.name"),
    (admin_pb2.PolicySpec(name="p", epsilon=1.5), "spec.epsilon"),
    (admin_pb2.PolicySpec(name="p", interactions=["toolong"]), "spec.interactions[0]"),
    (admin_pb2.PolicySpec(name="p", actions=[common_pb2.Action(id="a"), common_pb2.Action(id="a")]),
     "spec.actions[1].id"),
    (admin_pb2.PolicySpec(name="p", join_window_seconds=-1), "spec.join_window_seconds"),
    (admin_pb2.PolicySpec(name="p", default_reward=float("nan")), "spec.default_reward"),
    (admin_pb2.PolicySpec(name="p", kind=admin_pb2.POLICY_KIND_CB, slots=2), "spec.slots"),
    (admin_pb2.PolicySpec(name="p", bits=40), "spec.bits"),
    (admin_pb2.PolicySpec(name="p", cb_type=7), "spec.cb_type"),  # type: ignore[arg-type]
    (admin_pb2.PolicySpec(name="p", optimizer=7), "spec.optimizer"),  # type: ignore[arg-type]
    (admin_pb2.PolicySpec(name="p", reward_scale=-1.0), "spec.reward_scale"),
    (admin_pb2.PolicySpec(name="p", reward_scale=float("inf")), "spec.reward_scale"),
    (admin_pb2.PolicySpec(name="p", reward_scale=2e6), "spec.reward_scale"),
    (admin_pb2.PolicySpec(name="demo"), "spec.name"),
], ids=["name", "epsilon", "interaction", "duplicate action", "window", "NaN default", "cb slots", "bits",
        "cb_type", "optimizer", "negative reward scale", "infinite reward scale", "reward scale too large", "exists"])
def test_invalid_policy_specs_name_the_field(server: ServerThread, spec: admin_pb2.PolicySpec, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        admin(server).CreatePolicy(admin_pb2.CreatePolicyRequest(spec=spec))
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS)
    assert field in err.value.details()


def test_update_live_fields_and_learning_fields(server: ServerThread) -> None:
    a = admin(server)
    dec = decisions_pb2_grpc.DecisionServiceStub(server.channel())
    fb = feedback_pb2_grpc.FeedbackServiceStub(server.channel())

    def reward_some(n: int) -> None:
        for _ in range(n):
            fb.ReportReward(reward_event(dec.Decide(decide_request("demo")).event_id, 1.0))

    reward_some(30)  # joins of the first lineage, some maybe still on their way to the learner
    spec = a.GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).spec
    spec.join_window_seconds = 99
    spec.description = "longer window"
    live = a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec))
    assert (live.model_reset, live.policy.revision, live.policy.lineage) == (False, 2, 1)
    spec.exploration = admin_pb2.EXPLORATION_SOFTMAX
    spec.softmax_lambda = 5
    reset = a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec))
    assert (reset.model_reset, reset.policy.revision, reset.policy.lineage) == (True, 3, 2)
    # The new lineage learns, and the learner's backlog drains to zero across the reset.
    reward_some(20)
    stats = wait_for(lambda: (lambda s: s if s.learner_lag_events == 0 and s.learned >= 50 else None)(
        a.GetPolicyStats(admin_pb2.GetPolicyStatsRequest(name="demo"))), what="backlog drained after a reset")
    assert stats.model_version >= 1
    with pytest.raises(grpc.RpcError) as err:
        a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=admin_pb2.PolicySpec(name="missing")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_update_changes_what_it_names_and_keeps_the_rest(server: ServerThread) -> None:
    a = admin(server)
    a.CreatePolicy(admin_pb2.CreatePolicyRequest(spec=ccb_spec(description="rows of the home page")))

    def update(paths: list[str], **fields: object) -> admin_pb2.UpdatePolicyResponse:
        spec = admin_pb2.PolicySpec(name="rows", **fields)  # type: ignore[arg-type]
        return a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec, update_mask={"paths": paths}))

    # No mask: the fields the request sets. Replacing the whole spec with {name, join window}
    # made this multi-slot policy a one-slot cb policy without actions, on a new model.
    got = update([], join_window_seconds=30)
    kept = got.policy.spec
    assert (got.model_reset, got.policy.lineage, kept.join_window_seconds) == (False, 1, 30)
    assert (kept.kind, kept.slots, kept.epsilon, kept.aggregation) == (
        admin_pb2.POLICY_KIND_CCB, 3, 0.2, admin_pb2.AGGREGATION_SUM)
    assert ([x.id for x in kept.actions], kept.description) == (["a", "b", "c", "d"], "rows of the home page")
    assert len(decisions_pb2_grpc.DecisionServiceStub(server.channel()).Decide(decide_request("rows")).slots) == 3
    # A mask names fields to clear, and replaces a list whole.
    got = update(["description", "actions"], actions=[common_pb2.Action(id=x) for x in ("c", "e", "f")])
    assert (got.policy.spec.description, [x.id for x in got.policy.spec.actions]) == ("", ["c", "e", "f"])
    assert (got.model_reset, got.policy.spec.slots) == (False, 3)
    # A learning parameter named and unset goes back to its default: a new lineage.
    got = update(["epsilon"])
    assert (got.model_reset, got.policy.spec.epsilon, got.policy.lineage) == (True, 0.05, 2)
    # "*": the request is the whole spec.
    got = update(["*"], kind=admin_pb2.POLICY_KIND_CCB, actions=[common_pb2.Action(id="a")])
    assert (got.policy.spec.slots, got.policy.spec.aggregation, got.policy.spec.join_window_seconds) == (
        2, admin_pb2.AGGREGATION_FIRST, 10)


def test_updates_at_once_each_keep_the_others_change(server: ServerThread) -> None:
    """Each partial update read the spec, then awaited its write: one sent meanwhile read the same
    spec, and whichever wrote last undid the other's change."""
    a = admin(server)
    changes: list[dict[str, object]] = [
        dict(description="seen by a second admin"), dict(join_window_seconds=77), dict(default_reward=0.25),
        dict(retention_days=30), dict(aggregation=admin_pb2.AGGREGATION_MAX),
        dict(mode=admin_pb2.POLICY_MODE_APPRENTICE),
    ]

    def send(fields: dict[str, object]) -> int:
        spec = admin_pb2.PolicySpec(name="demo", **fields)  # type: ignore[arg-type]
        return a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec)).policy.revision

    for round_ in range(3):
        with ThreadPoolExecutor(len(changes)) as pool:
            revisions = sorted(pool.map(send, changes))
        first = 2 + round_ * (len(changes) + 1)
        assert revisions == list(range(first, first + len(changes)))  # each its own revision
        got = a.GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).spec
        for fields in changes:
            assert all(getattr(got, k) == v for k, v in fields.items()), (round_, fields, got)
        a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=admin_pb2.PolicySpec(name="demo"), update_mask={"paths": [
            k for fields in changes for k in fields]}))  # back to the defaults, for the next round


def test_an_update_whose_caller_leaves_is_made_whole(make_server: Any, sqlite_url: str) -> None:
    """Found from outside: an UpdatePolicy whose deadline passed while SQLite was busy wrote the
    new spec and lineage to the database, but the server went on serving the old ones (revision
    300, lineage 1 served; 301, lineage 2 stored), until a restart would switch them."""
    server: ServerThread = make_server(server_settings(sqlite_url))
    a = admin(server)
    busy = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    busy.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    threading.Timer(1.5, busy.execute, ["COMMIT"]).start()
    spec = admin_pb2.PolicySpec(name="demo", description="its caller left", learning_rate=0.25)
    with pytest.raises(grpc.RpcError) as err:
        a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def stored() -> tuple[int, int]:
        [row] = rows(sqlite_url, "policies", "name = 'demo'")
        return row["revision"], row["lineage"]

    wait_for(lambda: stored() == (2, 2), what="the change written once the database is free")
    served = wait_for(lambda: (p := a.GetPolicy(admin_pb2.GetPolicyRequest(name="demo"))).revision == 2 and p,
                      what="the change served as it is stored")
    assert (served.lineage, served.spec.description, served.spec.learning_rate) == (2, "its caller left", 0.25)
    busy.close()


@pytest.mark.parametrize("paths,field", [
    (["ghost"], "update_mask.paths[0]"),
    (["mode", "*"], "update_mask.paths[1]"),
    (["actions.id"], "update_mask.paths[0]"),
    (["mode", "name\x00"], "update_mask.paths[1]"),  # found from outside: INTERNAL
    (["name"] * 65, "update_mask.paths"),
], ids=["unknown field", "star among fields", "nested path", "a field's name and a NUL", "too many"])
def test_bad_update_masks_name_the_path(server: ServerThread, paths: list[str], field: str) -> None:
    request = admin_pb2.UpdatePolicyRequest(spec=admin_pb2.PolicySpec(name="demo", description="changed"),
                                            update_mask={"paths": paths})
    with pytest.raises(grpc.RpcError) as err:
        admin(server).UpdatePolicy(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    assert admin(server).GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).spec.description != "changed"


def test_policies_and_changes_persist_across_restart(make_server: object, db_url: str) -> None:
    first = make_server(server_settings(db_url))  # type: ignore[operator]
    a = admin(first)
    a.CreatePolicy(admin_pb2.CreatePolicyRequest(spec=ccb_spec()))
    spec = a.GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).spec
    spec.description = "changed by admin"
    a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec))
    first.stop()

    second = make_server(server_settings(db_url))  # type: ignore[operator]
    b = admin(second)
    assert {p.spec.name for p in b.ListPolicies(admin_pb2.ListPoliciesRequest()).policies} == {"demo", "rows"}
    demo = b.GetPolicy(admin_pb2.GetPolicyRequest(name="demo"))
    assert (demo.spec.description, demo.revision) == ("changed by admin", 2)


def test_a_config_file_edit_applies_at_restart_and_an_admins_change_stays(
        make_server: Any, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # Found from outside: once an admin had changed a policy declared in the config file, every
    # edit of it in the file was ignored at restart for good (only an INFO line said so).
    first = make_server(server_settings(db_url, demo_policy()))
    a = admin(first)
    spec = a.GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).spec
    spec.description = "changed by admin"
    a.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec))
    first.stop()

    # The same file: the admin's change stays, and the log says the file's is ignored.
    second = make_server(server_settings(db_url, demo_policy()))
    demo = admin(second).GetPolicy(admin_pb2.GetPolicyRequest(name="demo"))
    assert (demo.spec.description, demo.revision, demo.lineage) == ("changed by admin", 2, 1)
    assert "policy demo: description changed in the database" in caplog.text
    assert "the config file's are ignored" in caplog.text
    second.stop()

    # The file edited: the field it changed applies (a learning rate: a new lineage), the admin's stays.
    edited = server_settings(db_url, demo_policy(learning_rate=0.2, epsilon=0.2))
    third = make_server(edited)
    demo = admin(third).GetPolicy(admin_pb2.GetPolicyRequest(name="demo"))
    assert (demo.spec.description, demo.spec.learning_rate, demo.spec.epsilon) == ("changed by admin", 0.2, 0.2)
    assert (demo.revision, demo.lineage) == (3, 2)
    [entry] = [e for e in admin(third).ListAudit(admin_pb2.ListAuditRequest()).entries if e.actor == "server start"]
    assert (entry.action, entry.target) == ("policy.reset", "demo")
    third.stop()

    # Read once: the next start with the same file changes nothing.
    fourth = make_server(edited)
    assert admin(fourth).GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).revision == 3


def test_snapshot_now_and_stats(server: ServerThread) -> None:
    a = admin(server)
    snap = a.SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"))
    assert snap.snapshot_id >= 1 and snap.size_bytes > 0 and snap.policy == "demo"
    stored = rows(server.settings.db_url, "snapshots", "id = :i", i=snap.snapshot_id)
    assert stored[0]["trigger"] == "admin" and len(stored[0]["model"]) == snap.size_bytes
    stats = a.GetPolicyStats(admin_pb2.GetPolicyStatsRequest(name="demo"))
    assert stats.policy == "demo" and stats.last_snapshot_id == snap.snapshot_id
    with pytest.raises(grpc.RpcError) as err:
        a.SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="ghost"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
