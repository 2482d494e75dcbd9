"""DecisionService over a real channel, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import grpc
import pytest

from ltrr.v1 import common_pb2, decisions_pb2, decisions_pb2_grpc
from ltrr_client.client import decide_request
from ltrr_server.config import Limits
from tests.conftest import ServerThread, server_settings
from tests.helpers import rows, wait_for


def stub(server: ServerThread) -> decisions_pb2_grpc.DecisionServiceStub:
    return decisions_pb2_grpc.DecisionServiceStub(server.channel())


def test_decide_with_configured_actions_logs_the_decision(server: ServerThread) -> None:
    resp = stub(server).Decide(decide_request("demo", {"user": {"segment": "s1", "age": 31}}))
    ids = [p.action_id for p in resp.probabilities]
    assert ids == ["news", "sports", "music", "movies"]
    assert math.isclose(sum(p.probability for p in resp.probabilities), 1.0, rel_tol=1e-6)
    chosen = {p.action_id: p.probability for p in resp.probabilities}[resp.chosen_action_id]
    assert resp.probability == pytest.approx(chosen)
    assert len(resp.event_id) == 32

    logged = wait_for(lambda: rows(server.settings.db_url, "decisions", "event_id = :e", e=resp.event_id),
                      what="decision row")[0]
    assert logged["policy"] == "demo"
    assert json.loads(logged["probabilities"])[0] == pytest.approx([p.probability for p in resp.probabilities])
    assert json.loads(logged["chosen"]) == [ids.index(resp.chosen_action_id)]
    assert json.loads(logged["context"]) == [["user", [["segment", "s1"], ["age", 31.0]]]]


def test_decide_with_request_actions_and_caller_event_id(server: ServerThread) -> None:
    s = stub(server)
    req = decide_request("demo", None, ["x", ("y", {"item": {"genre": "jazz"}})], event_id="my-event-1")
    resp = s.Decide(req)
    assert resp.event_id == "my-event-1"
    assert {p.action_id for p in resp.probabilities} == {"x", "y"}
    with pytest.raises(grpc.RpcError) as err:
        s.Decide(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event_id" in err.value.details()


def test_caller_event_ids_are_checked_against_the_log_too(make_server: Any, sqlite_url: str) -> None:
    first = make_server(server_settings(sqlite_url))
    stub(first).Decide(decide_request("demo", event_id="order-42"))
    first.stop()
    second = make_server(server_settings(sqlite_url))  # the id is no longer in memory, only in the log
    with pytest.raises(grpc.RpcError) as err:
        stub(second).Decide(decide_request("demo", event_id="order-42"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "already used" in err.value.details()
    assert len(rows(sqlite_url, "decisions")) == 1


def _nan_feature() -> decisions_pb2.DecideRequest:
    return decisions_pb2.DecideRequest(policy="demo", context=[common_pb2.Namespace(
        name="user", features=[common_pb2.Feature(name="ok", num=1.0), common_pb2.Feature(name="x", num=math.nan)])])


BAD_REQUESTS = [
    ("unknown policy", decide_request("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ("empty policy", decide_request(""), grpc.StatusCode.INVALID_ARGUMENT, "policy"),
    ("empty action id", decide_request("demo", None, ["a", ""]), grpc.StatusCode.INVALID_ARGUMENT, "actions[1].id"),
    ("duplicate action ids", decide_request("demo", None, ["a", "b", "a"]), grpc.StatusCode.INVALID_ARGUMENT,
     "actions[2].id"),
    ("NaN feature", _nan_feature(), grpc.StatusCode.INVALID_ARGUMENT, "context[0].features[1].num"),
    ("infinite feature", decide_request("demo", {"u": {"x": math.inf}}), grpc.StatusCode.INVALID_ARGUMENT,
     "context[0].features[0].num"),
    ("too many actions", decide_request("demo", None, [f"a{i}" for i in range(300)]),
     grpc.StatusCode.INVALID_ARGUMENT, "max_actions"),
    ("too many features", decide_request("demo", {"u": {f"f{i}": 1.0 for i in range(1100)}}),
     grpc.StatusCode.INVALID_ARGUMENT, "max_features"),
    ("empty namespace name", decide_request("demo", {"": {"x": 1.0}}), grpc.StatusCode.INVALID_ARGUMENT,
     "context[0].name"),
    ("slots on a cb policy", decide_request("demo", slots=2), grpc.StatusCode.INVALID_ARGUMENT, "slots"),
    ("oversized request", decide_request("demo", {"u": {"blob": "x" * 200}}, [f"a{i}" for i in range(250)]
                                         + ["z" * (5 * 1024 * 1024)]), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


@pytest.mark.parametrize("name,request_msg,code,field", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_decide_requests_get_a_clear_status(
    server: ServerThread, name: str, request_msg: decisions_pb2.DecideRequest, code: grpc.StatusCode, field: str
) -> None:
    s = stub(server)
    with pytest.raises(grpc.RpcError) as err:
        s.Decide(request_msg)
    assert err.value.code() == code, err.value.details()
    assert field in (err.value.details() or "")
    # The server is unharmed and nothing half-made was logged.
    assert s.Decide(decide_request("demo")).chosen_action_id


def test_decide_stream_answers_in_order_and_survives_bad_requests(server: ServerThread) -> None:
    reqs = [decide_request("demo", {"user": {"segment": f"s{i}"}}, request_id=str(i)) for i in range(50)]
    reqs[10] = decide_request("nope", request_id="10")
    reqs[20] = decide_request("demo", None, ["a", "a"], request_id="20")
    resps = list(stub(server).DecideStream(iter(reqs)))
    assert [r.request_id for r in resps] == [str(i) for i in range(50)]
    assert resps[10].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert resps[20].error.field == "actions[1].id"
    good = [r for i, r in enumerate(resps) if i not in (10, 20)]
    assert all(r.event_id and not r.HasField("error") for r in good)
    wait_for(lambda: len(rows(server.settings.db_url, "decisions")) == 48, what="48 logged decisions")


def test_decide_stream_reading_ahead_of_a_slow_reader_keeps_every_answer_in_order(
    make_server: Any, sqlite_url: str
) -> None:
    # Two answers may wait to be written: the client sends 300 before reading the first.
    server = make_server(server_settings(sqlite_url, limits=Limits(max_stream_unsent_decisions=2)))
    reqs = [decide_request("demo", {"user": {"segment": f"s{i % 5}"}}, request_id=str(i)) for i in range(300)]
    responses = stub(server).DecideStream(iter(reqs))
    time.sleep(0.5)
    got = list(responses)
    assert [r.request_id for r in got] == [str(i) for i in range(300)]
    assert all(r.event_id and not r.HasField("error") for r in got)
    assert len({r.event_id for r in got}) == 300
    wait_for(lambda: len(rows(server.settings.db_url, "decisions")) == 300, what="300 logged decisions")
