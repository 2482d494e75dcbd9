"""API keys, roles, quotas, the audit trail and safe defaults, against a real server.

The role table below is written out by hand (not read from ``api/auth.py``): a method given the
wrong role there fails here.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ltrr.v1 import admin_pb2, decisions_pb2, feedback_pb2, models_pb2, retrieval_pb2
from ltrr_client.cli import main as cli
from ltrr_client.client import ChannelTls, LtrrClient, decide_request
from ltrr_server.config import Limits, Settings
from ltrr_server.errors import InvalidArgument
from ltrr_server.keys import REFRESH_SECONDS, KeyStore, NewKey
from ltrr_server.log.db import create_engine
from tests.conftest import ServerThread, demo_policy, server_settings
from tests.helpers import rows, wait_for
from tests.tls_certs import Authority

# Every RPC of every ltrr service and the one role that may call it.
ROLE_OF = {
    "DecisionService/Decide": "decide", "DecisionService/DecideStream": "decide",
    "RetrievalService/Retrieve": "decide",
    "ModelService/XmrPredict": "decide", "ModelService/Autocomplete": "decide", "ModelService/RecordQuery": "decide",
    "ModelService/ListModels": "admin", "ModelService/PromoteModel": "admin",
    "FeedbackService/ReportReward": "feedback", "FeedbackService/StreamRewards": "feedback",
    **{f"AdminService/{m}": "admin" for m in (
        "CreatePolicy", "UpdatePolicy", "ListPolicies", "GetPolicy", "SnapshotPolicy", "GetPolicyStats",
        "EvaluatePolicy", "TunePolicy", "ImportEvents", "ExportEvents", "CreateKey", "ListKeys", "RevokeKey",
        "ListAudit")},
}
SERVICES = [decisions_pb2, retrieval_pb2, models_pb2, feedback_pb2, admin_pb2]


def methods() -> Iterator[Any]:
    for module in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            yield from service.methods


def call(channel: grpc.Channel, method: Any, key: str = "") -> grpc.StatusCode:
    """Calls ``method`` with an empty request (harmless: refused or a no-op), returns its code."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = message_factory.GetMessageClass(method.input_type)()
    metadata = [("authorization", f"Bearer {key}")] if key else []
    encode, decode = request.SerializeToString, message_factory.GetMessageClass(method.output_type).FromString
    try:
        if method.client_streaming:
            list(channel.stream_stream(path, encode, decode)(iter([request]), metadata=metadata, timeout=10))
        elif method.server_streaming:
            list(channel.unary_stream(path, encode, decode)(request, metadata=metadata, timeout=10))
        else:
            channel.unary_unary(path, encode, decode)(request, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def keyed(db_url: str, *roles: str, tenant: str = "default", wait: bool = True, **quotas: Any) -> str:
    """A key made on the database, as `ltrr keys create` makes it; with ``wait``, once a server has read it."""
    engine = create_engine(db_url)
    try:
        key = KeyStore(engine).create(NewKey(tenant, roles, name="test", **quotas))[1]
    finally:
        engine.dispose()
    if wait:
        time.sleep(REFRESH_SECONDS + 0.2)
    return key


@pytest.fixture
def secured(make_server: Any, sqlite_url: str) -> ServerThread:
    server: ServerThread = make_server(server_settings(sqlite_url, auth="keys"))
    return server


def test_the_role_table_covers_every_rpc() -> None:
    assert sorted(ROLE_OF) == sorted(f"{m.containing_service.name}/{m.name}" for m in methods())


def test_every_rpc_answers_every_role_as_specified(secured: ServerThread, sqlite_url: str) -> None:
    keys = {role: keyed(sqlite_url, role, wait=role == "admin") for role in ("decide", "feedback", "admin")}
    wrong = keys["admin"][:-4] + "AAAA"
    ch = secured.channel()
    table = {}
    for method in methods():
        needed = ROLE_OF[f"{method.containing_service.name}/{method.name}"]
        row = {"none": call(ch, method), "wrong": call(ch, method, wrong)}
        row |= {role: call(ch, method, key) for role, key in keys.items()}
        table[method.name] = row
        assert row["none"] == grpc.StatusCode.UNAUTHENTICATED, (method.name, row)
        assert row["wrong"] == grpc.StatusCode.UNAUTHENTICATED, (method.name, row)
        for role in keys:
            if role == needed:
                # Past authentication: answered by the service (an empty request is mostly refused).
                assert row[role] not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                                         grpc.StatusCode.UNIMPLEMENTED), (method.name, row)
            else:
                assert row[role] == grpc.StatusCode.PERMISSION_DENIED, (method.name, role, row)
    # A key with several roles may do what each allows.
    both = keyed(sqlite_url, "decide", "feedback")
    with LtrrClient(secured.target, api_key=both) as c:
        c.report_reward(c.decide("demo").event_id, 1.0)
    # Health needs no key (probes carry none); reflection needs a valid one, of any role.
    assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == \
        health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as err:
        list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([reflect])))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [answer] = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
        iter([reflect]), metadata=[("authorization", f"Bearer {keys['decide']}")])
    assert "ltrr.v1.DecisionService" in {s.name for s in answer.list_services_response.service}
    text = urllib.request.urlopen(secured.metrics_url, timeout=5).read().decode()
    assert 'ltrr_auth_refusals_total{reason="missing"}' in text
    assert 'ltrr_auth_refusals_total{reason="role"}' in text


def test_a_revoked_key_stops_working_within_a_second(secured: ServerThread, sqlite_url: str) -> None:
    other = keyed(sqlite_url, "decide", wait=False)
    admin = keyed(sqlite_url, "admin", "decide")
    with LtrrClient(secured.target, api_key=admin) as c:
        me = c.list_keys()
        assert len(me) == 2
        # Through the admin service: at once.
        [mine] = [k for k in me if "admin" in k.roles]
        [theirs] = [k for k in me if k.id != mine.id]
        assert c.revoke_key(theirs.id).revoked_at_ms > 0
    with LtrrClient(secured.target, api_key=other) as c, pytest.raises(grpc.RpcError) as err:
        c.decide("demo")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # On the database (ltrr keys revoke, or another server): within a second.
    assert cli(["keys", "revoke", mine.id, "--db", sqlite_url]) == 0
    revoked = time.monotonic()

    def refused() -> bool:
        try:
            with LtrrClient(secured.target, api_key=admin, timeout=2) as c:
                c.decide("demo")
            return False
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            return True

    wait_for(refused, timeout=1.0, what="the revoked key refused")
    assert time.monotonic() - revoked < 1.0


def test_keys_are_never_stored_or_logged_in_clear(secured: ServerThread, sqlite_url: str,
                                                  caplog: pytest.LogCaptureFixture,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    admin = keyed(sqlite_url, "admin")
    with LtrrClient(secured.target, api_key=admin) as c:
        made = c.create_key(["decide"], name="frontend")
    prefix = f"ltrr_{made.key.id}_"
    secret = made.secret[len(prefix):]
    assert made.secret.startswith(prefix) and len(secret) >= 40
    with LtrrClient(secured.target, api_key=made.secret) as c:
        c.decide("demo")
    with LtrrClient(secured.target, api_key=made.secret[:-1]) as c, pytest.raises(grpc.RpcError):
        c.decide("demo")
    assert cli(["keys", "list", "--db", sqlite_url]) == 0
    assert cli(["audit", "--db", sqlite_url]) == 0
    printed = capsys.readouterr().out
    for table in ("api_keys", "audit", "policies", "decisions"):
        dump = repr(rows(sqlite_url, table))
        assert secret not in dump and admin[len(prefix):] not in dump, table
    assert secret not in caplog.text and secret not in printed
    [row] = rows(sqlite_url, "api_keys", "id = :id", id=made.key.id)
    assert len(row["secret_hash"]) == 64 and len(row["salt"]) == 32


def test_an_admin_key_manages_its_own_tenants_keys_only(secured: ServerThread, sqlite_url: str) -> None:
    keyed(sqlite_url, "decide", tenant="team-b", wait=False)
    a = keyed(sqlite_url, "admin", tenant="team-a")
    with LtrrClient(secured.target, api_key=a) as c:
        assert {k.tenant for k in c.list_keys()} == {"team-a"}
        with pytest.raises(grpc.RpcError) as err:
            c.create_key(["decide"], tenant="team-b")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        b_key = next(k for k in KeyStore(create_engine(sqlite_url)).list_keys("team-b"))
        with pytest.raises(grpc.RpcError) as err:
            c.revoke_key(b_key.id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert c.create_key(["decide"]).key.tenant == "team-a"
        assert all(e.tenant == "team-a" for e in c.audit())


def test_quotas_answer_resource_exhausted_with_a_retry_delay(secured: ServerThread, sqlite_url: str) -> None:
    key = keyed(sqlite_url, "decide", "feedback", decisions_per_second=5, max_streams=1)
    with LtrrClient(secured.target, api_key=key) as c:
        for _ in range(5):
            c.decide("demo")
        with pytest.raises(grpc.RpcError) as err:
            c.decide("demo")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = int(dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"])
        assert 0 < delay <= 200
        time.sleep(delay / 1000)
        c.decide("demo")
        # One stream at a time: a second is refused while the first is open.
        done = threading.Event()

        def held_open() -> Iterator[decisions_pb2.DecideRequest]:
            yield decide_request("demo")
            done.wait(10)

        first = c.decide_stream(held_open())
        next(first)  # answered: the stream is open
        with pytest.raises(grpc.RpcError) as err:
            list(c.decide_stream(iter([decide_request("demo")])))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        done.set()
        list(first)
        time.sleep(0.5)  # a token for the next
        list(c.decide_stream(iter([decide_request("demo")])))  # the first one closed: a second may open
    # A stream past its rate is slowed, not refused: 15 decisions at 5 a second take about 2 s.
    key2 = keyed(sqlite_url, "decide", decisions_per_second=5)
    with LtrrClient(secured.target, api_key=key2) as c:
        t0 = time.monotonic()
        answers = list(c.decide_stream(decide_request("demo") for _ in range(15)))
        took = time.monotonic() - t0
    assert len(answers) == 15 and 1.5 < took < 5, took
    text = urllib.request.urlopen(secured.metrics_url, timeout=5).read().decode()
    assert 'ltrr_quota_exceeded_total{quota="decisions",tenant="default"}' in text
    assert 'ltrr_quota_exceeded_total{quota="streams",tenant="default"}' in text


def test_the_audit_trail_records_every_admin_change(secured: ServerThread, sqlite_url: str) -> None:
    admin = keyed(sqlite_url, "admin")
    with LtrrClient(secured.target, api_key=admin) as c:
        spec = admin_pb2.PolicySpec(name="audited", kind=admin_pb2.POLICY_KIND_CB, actions=[
            {"id": "a"}, {"id": "b"}], description="first")
        c.create_policy(spec)
        spec.description = "second"
        c.update_policy(spec)
        spec.learning_rate = 0.3  # a learning parameter: a new lineage
        assert c.update_policy(spec).model_reset
        made = c.create_key(["decide"], name="frontend")
        c.revoke_key(made.key.id)
        entries = c.audit()
    got = [(e.action, e.target) for e in entries]
    assert got[-5:] == [("policy.create", "audited"), ("policy.update", "audited"), ("policy.reset", "audited"),
                        ("key.create", made.key.id), ("key.revoke", made.key.id)]
    update = entries[-4]
    assert update.before["description"] == "first" and update.after["description"] == "second"
    assert entries[-3].after["learning_rate"] == pytest.approx(0.3)
    assert all(e.actor.startswith("key:") and e.at_ms > 0 for e in entries[-5:])
    assert not entries[-2].HasField("before") and entries[-1].after["revoked_at"] is not None


def test_a_client_certificate_can_stand_for_a_key(make_server: Any, sqlite_url: str, tmp_path: Path) -> None:
    ca, clients = Authority(tmp_path, "ca"), Authority(tmp_path, "clients")
    pair = ca.issue("server", "ltrr", server=True)
    server = make_server(server_settings(sqlite_url, auth="keys", tls_cert=str(pair.cert), tls_key=str(pair.key),
                                         tls_client_ca=str(clients.pem)))
    engine = create_engine(sqlite_url)
    KeyStore(engine).create(NewKey("default", ("decide",), subject="search-frontend"))
    engine.dispose()
    mapped, unmapped = clients.issue("fe", "search-frontend", server=False), clients.issue("x", "other", server=False)
    time.sleep(REFRESH_SECONDS + 0.2)  # read by the server
    assert _decides(server.target, ChannelTls(str(ca.pem), str(mapped.cert), str(mapped.key)))
    with pytest.raises(grpc.RpcError) as err:
        _decides(server.target, ChannelTls(str(ca.pem), str(unmapped.cert), str(unmapped.key)))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _decides(target: str, tls: ChannelTls) -> bool:
    with LtrrClient(target, tls=tls, timeout=5) as c:
        c.decide("demo")
    return True


# ---------------------------------------------------------------------- safe defaults
def test_without_keys_the_server_binds_loopback_and_refuses_more() -> None:
    assert Settings().bind_host == "127.0.0.1"
    assert Settings(auth="keys").bind_host == "0.0.0.0"
    with pytest.raises(InvalidArgument) as err:
        Settings(grpc_host="0.0.0.0")
    assert err.value.field == "server.grpc_host" and "--insecure" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        Settings(admin_port=7000, admin_host="10.0.0.1")
    assert err.value.field == "server.admin_host"
    Settings(grpc_host="0.0.0.0", insecure=True)
    Settings(grpc_host="0.0.0.0", auth="keys")


def test_ltrr_serve_beyond_loopback_without_keys_refuses_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["serve", "--host", "0.0.0.0", "--grpc-port", "0", "--metrics-port", "-1"]) == 2
    assert "--insecure" in capsys.readouterr().err


def test_insecure_says_so_in_the_log_and_a_metric(make_server: Any, sqlite_url: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server = make_server(server_settings(sqlite_url, grpc_host="0.0.0.0", insecure=True))
    assert "INSECURE" in caplog.text
    assert "ltrr_insecure 1.0" in urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()


def test_the_admin_service_can_have_a_port_of_its_own_and_reflection_can_be_off(make_server: Any,
                                                                                 sqlite_url: str) -> None:
    server = make_server(server_settings(sqlite_url, admin_port=0, reflection=False))
    assert server.server.admin_port > 0
    with LtrrClient(server.target) as c:
        c.decide("demo")
        with pytest.raises(grpc.RpcError) as err:
            c.list_policies()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        reflect = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as err:
            list(reflection_pb2_grpc.ServerReflectionStub(c.channel).ServerReflectionInfo(iter([reflect])))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with LtrrClient(f"127.0.0.1:{server.server.admin_port}") as c:
        assert [p.spec.name for p in c.list_policies()] == ["demo"]
        with pytest.raises(grpc.RpcError) as err:
            c.decide("demo")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert health_pb2_grpc.HealthStub(c.channel).Check(
            health_pb2.HealthCheckRequest(service="ltrr.v1.AdminService")).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_policies_are_bounded_so_their_metric_labels_are(make_server: Any, sqlite_url: str) -> None:
    server = make_server(server_settings(sqlite_url, limits=Limits(max_policies=2)))
    with LtrrClient(server.target) as c:
        c.create_policy(admin_pb2.PolicySpec(name="second", actions=[{"id": "a"}, {"id": "b"}]))
        with pytest.raises(grpc.RpcError) as err:
            c.create_policy(admin_pb2.PolicySpec(name="third", actions=[{"id": "a"}, {"id": "b"}]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_policies" in (err.value.details() or "")
    with pytest.raises(InvalidArgument) as bad:
        server_settings(sqlite_url, demo_policy(), demo_policy(name="b"), limits=Limits(max_policies=1))
    assert bad.value.field == "policies"


# ---------------------------------------------------------------------- tenants
def test_a_tenant_reaches_none_of_another_tenants_policies_models_or_events(secured: ServerThread,
                                                                             sqlite_url: str) -> None:
    a = keyed(sqlite_url, "admin", "decide", "feedback", tenant="team-a", wait=False)
    b = keyed(sqlite_url, "admin", "decide", "feedback", tenant="team-b", wait=False)
    default = keyed(sqlite_url, "admin", "decide", "feedback")
    spec = admin_pb2.PolicySpec(name="search", actions=[{"id": "x"}, {"id": "y"}], join_window_seconds=30)
    with LtrrClient(secured.target, api_key=a) as ca:
        ca.create_policy(spec)
        joined = ca.decide("search").event_id
        ca.report_reward(joined, 0.5)  # the first reward joins it (aggregation "first")
        pending = ca.decide("search").event_id
        assert [p.spec.name for p in ca.list_policies()] == ["search"]
    wait_for(lambda: rows(sqlite_url, "joined", "event_id = :e", e=joined), what="the first event joined")
    nf, ok = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK
    for key in (b, default):
        ch = grpc.insecure_channel(secured.target)
        md = [("authorization", f"Bearer {key}")]
        cases = cross_tenant_calls(ch, md, spec, pending, joined)
        got = {}
        for what, do in cases.items():
            try:
                do()
                got[what] = ok
            except grpc.RpcError as err:
                got[what] = err.code()
        assert got == {what: nf for what in cases}, got
        [acks] = feedback_stub(ch).StreamRewards(iter([feedback_pb2.RewardBatch(events=[
            feedback_pb2.RewardEvent(event_id=e, value=1.0) for e in (pending, joined)])]), metadata=md)
        assert [x.status for x in acks.acks] == [feedback_pb2.REWARD_STATUS_UNKNOWN_EVENT] * 2
        [answer] = decisions_stub(ch).DecideStream(iter([decide_request("search")]), metadata=md)
        assert answer.error.code == nf.value[0]
        names = [p.spec.name for p in admin_stub(ch).ListPolicies(admin_pb2.ListPoliciesRequest(),
                                                                   metadata=md).policies]
        assert "search" not in names
        ch.close()
    # Sessions kept for autocompletion are a tenant's own too.
    counts = []
    for key in (a, a, b, default):
        with LtrrClient(secured.target, api_key=key) as c:
            counts.append(c.models.RecordQuery(models_pb2.RecordQueryRequest(session_id="s1", query="jazz"),
                                               metadata=[]).session_queries)
    assert counts == [1, 2, 1, 1]
    # Team b's own "search" is another policy; what it does leaves team a's untouched.
    with LtrrClient(secured.target, api_key=b) as cb:
        cb.create_policy(spec)
        cb.report_reward(cb.decide("search").event_id, 1.0)
        assert [p.spec.name for p in cb.list_policies()] == ["search"]
    with LtrrClient(secured.target, api_key=a) as ca:
        assert ca.report_reward(pending, 1.0).status == feedback_pb2.REWARD_STATUS_ACCEPTED
        assert ca.stats("search").decisions == 2
    with LtrrClient(secured.target, api_key=default) as cd:
        assert [p.spec.name for p in cd.list_policies()] == ["demo"]
    assert {r["name"] for r in rows(sqlite_url, "policies")} == {"demo", "team-a/search", "team-b/search"}


def cross_tenant_calls(ch: grpc.Channel, md: list[tuple[str, str]], spec: admin_pb2.PolicySpec, pending: str,
                       joined: str) -> dict[str, Any]:
    """Every RPC that names a policy, a model or an event, naming another tenant's."""
    return {
        "Decide": lambda: decisions_stub(ch).Decide(decide_request("search"), metadata=md),
        "Retrieve": lambda: retrieval_stub(ch).Retrieve(
            retrieval_pb2.RetrieveRequest(policy="search", query="q"), metadata=md),
        "GetPolicy": lambda: admin_stub(ch).GetPolicy(admin_pb2.GetPolicyRequest(name="search"), metadata=md),
        "GetPolicy with the tenant's prefix": lambda: admin_stub(ch).GetPolicy(
            admin_pb2.GetPolicyRequest(name="team-a/search"), metadata=md),
        "UpdatePolicy": lambda: admin_stub(ch).UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=spec), metadata=md),
        "SnapshotPolicy": lambda: admin_stub(ch).SnapshotPolicy(
            admin_pb2.SnapshotPolicyRequest(name="search"), metadata=md),
        "GetPolicyStats": lambda: admin_stub(ch).GetPolicyStats(
            admin_pb2.GetPolicyStatsRequest(name="search"), metadata=md),
        "EvaluatePolicy": lambda: list(admin_stub(ch).EvaluatePolicy(
            admin_pb2.EvaluatePolicyRequest(name="search"), metadata=md)),
        "TunePolicy": lambda: list(admin_stub(ch).TunePolicy(admin_pb2.TunePolicyRequest(name="search"),
                                                             metadata=md)),
        "ExportEvents": lambda: list(admin_stub(ch).ExportEvents(admin_pb2.ExportEventsRequest(name="search"),
                                                                 metadata=md)),
        "ImportEvents": lambda: list(admin_stub(ch).ImportEvents(iter([admin_pb2.ImportBatch(
            policy="search", lines=["{}"])]), metadata=md)),
        "ReportReward (pending event)": lambda: feedback_stub(ch).ReportReward(
            feedback_pb2.RewardEvent(event_id=pending, value=1.0), metadata=md),
        "ReportReward (joined event)": lambda: feedback_stub(ch).ReportReward(
            feedback_pb2.RewardEvent(event_id=joined, value=1.0), metadata=md),
        "PromoteModel with the tenant's prefix": lambda: models_stub(ch).PromoteModel(
            models_pb2.PromoteModelRequest(name="team-a/m", version=1), metadata=md),
        "XmrPredict with the tenant's prefix": lambda: models_stub(ch).XmrPredict(
            models_pb2.XmrPredictRequest(model="team-a/m", queries=["q"]), metadata=md),
    }


def decisions_stub(ch: grpc.Channel) -> Any:
    from ltrr.v1 import decisions_pb2_grpc

    return decisions_pb2_grpc.DecisionServiceStub(ch)


def retrieval_stub(ch: grpc.Channel) -> Any:
    from ltrr.v1 import retrieval_pb2_grpc

    return retrieval_pb2_grpc.RetrievalServiceStub(ch)


def admin_stub(ch: grpc.Channel) -> Any:
    from ltrr.v1 import admin_pb2_grpc

    return admin_pb2_grpc.AdminServiceStub(ch)


def feedback_stub(ch: grpc.Channel) -> Any:
    from ltrr.v1 import feedback_pb2_grpc

    return feedback_pb2_grpc.FeedbackServiceStub(ch)


def models_stub(ch: grpc.Channel) -> Any:
    from ltrr.v1 import models_pb2_grpc

    return models_pb2_grpc.ModelServiceStub(ch)
