"""Every request field is bounded (``ltrr_server.bounds``), and every bound is enforced.

The table of bad requests is made from the bounds themselves: for each field of each request
message of each RPC, a request just past its bound (one character, one item, one unit too many,
NaN, an unknown enum value), plus requests that do not decode at all. Each must get
INVALID_ARGUMENT naming the field (in streams: the answer in the stream says so), and the
server must still be healthy after it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ltrr.v1 import (
    admin_pb2,
    common_pb2,
    decisions_pb2,
    decisions_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    models_pb2,
    retrieval_pb2,
    search_pb2,
)
from ltrr_client.client import decide_request
from ltrr_server import bounds
from ltrr_server.app import SERVICES
from ltrr_server.bounds import BOUNDS, Enum, Free, Items, Nested, Number, Text, resolve
from tests.conftest import ServerThread, retrieval_server_settings

_MODULES = (admin_pb2, decisions_pb2, feedback_pb2, models_pb2, retrieval_pb2, search_pb2)


def _services() -> list[Any]:
    found = [s for m in _MODULES for s in m.DESCRIPTOR.services_by_name.values()]
    assert sorted(s.full_name for s in found) == sorted(SERVICES)
    return found


def _request_messages() -> dict[str, Descriptor]:
    """Every message a request can hold, by full name, found from the RPCs' input types."""
    out: dict[str, Descriptor] = {}

    def walk(d: Descriptor) -> None:
        if d.full_name in out:
            return
        out[d.full_name] = d
        for f in d.fields:
            if f.message_type is not None:
                walk(f.message_type)

    for service in _services():
        for method in service.methods:
            walk(method.input_type)
    return out


def test_every_request_field_has_a_bound() -> None:
    fields = {f.full_name for d in _request_messages().values() for f in d.fields}
    missing = sorted(fields - set(BOUNDS))
    assert not missing, f"request fields without a bound in ltrr_server/bounds.py: {missing}"
    stale = sorted(set(BOUNDS) - fields)
    assert not stale, f"bounds for fields no request has: {stale}"


# ---------------------------------------------------------------------------------- the table
@dataclass
class Case:
    """One bad request: ``rpc`` with ``request``; its status must be ``code``, naming one of ``fields``."""

    rpc: str
    what: str
    request: Any
    fields: tuple[str, ...]
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def id(self) -> str:
        return f"{self.rpc}:{self.what}"


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _sample(d: Descriptor, i: int) -> Message:
    """A valid element of a repeated message field (distinct ids where ids must differ)."""
    cls = message_factory.GetMessageClass(d)
    if d.full_name == "ltrr.v1.Namespace":
        return cls(name=f"n{i}", features=[common_pb2.Feature(name="f", str="v")])
    if d.full_name == "ltrr.v1.Feature":
        return cls(name=f"f{i}", str="v")
    if d.full_name == "ltrr.v1.Action":
        return cls(id=f"a{i}")
    if d.full_name == "ltrr.v1.RewardEvent":
        return cls(event_id=f"e{i}", value=1.0)
    if d.full_name == "ltrr.v1.EvaluationTarget":
        return cls(uniform=True)
    if d.full_name == "ltrr.v1.ActionWeight":
        return cls(action=f"a{i}", weight=1.0)
    if d.full_name == "ltrr.v1.FeatureTable":
        return cls(value=f"v{i}")
    if d.full_name == "ltrr.v1.PolicySpec":
        return cls()
    raise AssertionError(f"no sample for {d.full_name}")


def _scalar_sample(f: FieldDescriptor, i: int) -> Any:
    if f.type == FieldDescriptor.TYPE_STRING:
        return f"q{i}"
    if f.type == FieldDescriptor.TYPE_ENUM:
        return 1
    return 0.5


def _over(f: FieldDescriptor, bound: Any, settings: Any) -> list[tuple[str, Any]]:
    """Values just past the bound of a singular field: (what, value)."""
    if isinstance(bound, Text):
        n = resolve(bound.max_chars, settings)
        return [(f"{n + 1} characters", "x" * (n + 1))]
    if isinstance(bound, Enum):
        return [("an unknown enum value", 999)]
    if isinstance(bound, Number):
        out: list[tuple[str, Any]] = []
        is_float = f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
        if is_float:
            out.append(("NaN", math.nan))
        if math.isfinite(bound.hi):
            past = math.nextafter(bound.hi, math.inf) if is_float else int(bound.hi) + 1
            out.append((f"{past!r}", past))
        return out
    return []


def _cases_for(rpc: str, base: Message, settings: Any, prefix: str = "", skip: tuple[str, ...] = ()
               ) -> Iterator[Case]:
    """Cases for every field reachable from ``base`` (a valid request)."""

    def walk(d: Descriptor, path: list[tuple[str, int | str | None]], parents: tuple[str, ...]) -> Iterator[Case]:
        for f in d.fields:
            bound = BOUNDS[f.full_name]
            name = _path(prefix, path + [(f.name, None)])
            if f.full_name in skip or isinstance(bound, Free):
                continue
            if isinstance(bound, Nested):
                yield from walk(f.message_type, path + [(f.name, None)], parents)
                continue
            if f.is_repeated:
                assert isinstance(bound, Items), f.full_name
                n = resolve(bound.max_items, settings)
                here = (*parents, name)
                if _is_map(f):
                    entries = {f"s{i}": 10 for i in range(n + 1)}
                    yield Case(rpc, f"{name}: {n + 1} entries", _with(base, path, f.name, entries), here)
                    yield Case(rpc, f"{name}: a key of 65 characters",
                               _with(base, path, f.name, {"x" * (bounds.ID_CHARS + 1): 10}), here)
                    yield Case(rpc, f"{name}: a budget past the ladder",
                               _with(base, path, f.name, {"lexical": bounds.MAX_BUDGET + 1}), here)
                    continue
                if f.message_type is not None:
                    many = [_sample(f.message_type, i) for i in range(n + 1)]
                    yield Case(rpc, f"{name}: {n + 1} items", _with(base, path, f.name, many), here)
                    inner = path + [(f.name, 0)]
                    yield from walk(f.message_type, inner, here)
                    continue
                many = [_scalar_sample(f, i) for i in range(n + 1)]
                yield Case(rpc, f"{name}: {n + 1} items", _with(base, path, f.name, many), here)
                if bound.each is not None:
                    for what, value in _over(f, bound.each, settings):
                        yield Case(rpc, f"{name}[0]: {what}", _with(base, path, f.name, [value]),
                                   (*here, f"{name}[0]"))
                continue
            for what, value in _over(f, bound, settings):
                yield Case(rpc, f"{name}: {what}", _with(base, path, f.name, value), (*parents, name))

    yield from walk(base.DESCRIPTOR, [], ())


def _path(prefix: str, path: list[tuple[str, int | str | None]]) -> str:
    out = prefix
    for name, index in path:
        out = f"{out}.{name}" if out else name
        if isinstance(index, int):
            out += f"[{index}]"
    return out


def _with(base: Message, path: list[tuple[str, int | str | None]], field: str, value: Any) -> Message:
    """A copy of ``base`` with ``field`` (under ``path``, whose lists get a first element) set to ``value``."""
    msg = copy.deepcopy(base)
    node: Any = msg
    for name, index in path:
        child = getattr(node, name)
        if isinstance(index, int):
            if len(child) == 0:
                child.append(_sample(node.DESCRIPTOR.fields_by_name[name].message_type, 0))
            node = child[index]
        else:
            node = child
    target = getattr(node, field) if node.DESCRIPTOR.fields_by_name[field].is_repeated else None
    if target is None:
        setattr(node, field, value)
    elif isinstance(value, dict):
        target.clear()
        target.update(value)
    else:
        del target[:]
        target.extend(value)
    return msg


def _bad_requests(settings: Any, event_id: str) -> list[Case]:
    spec = admin_pb2.PolicySpec(name="table", actions=[common_pb2.Action(id="a"), common_pb2.Action(id="b")])
    bases: list[tuple[str, Message, str, tuple[str, ...]]] = [
        ("Decide", decide_request("demo"), "", ()),
        ("DecideStream", decide_request("demo"), "", ()),
        ("ReportReward", feedback_pb2.RewardEvent(event_id=event_id, value=1.0), "", ()),
        ("StreamRewards", feedback_pb2.RewardBatch(events=[feedback_pb2.RewardEvent(event_id=event_id, value=1.0)]),
         "", ()),
        ("Retrieve", retrieval_pb2.RetrieveRequest(policy="retrieval", query="mellow jazz"), "",
         ("ltrr.v1.RetrieveRequest.FixedPlanEntry.key", "ltrr.v1.RetrieveRequest.FixedPlanEntry.value")),
        ("Search", search_pb2.SearchRequest(policy="retrieval", query="mellow jazz"), "",
         ("ltrr.v1.SearchRequest.FixedPlanEntry.key", "ltrr.v1.SearchRequest.FixedPlanEntry.value")),
        ("XmrPredict", models_pb2.XmrPredictRequest(model="m", queries=["jazz"]), "", ()),
        ("Autocomplete", models_pb2.AutocompleteRequest(model="m", prefix="ja"), "", ()),
        ("RecordQuery", models_pb2.RecordQueryRequest(session_id="s", query="jazz"), "", ()),
        ("ListModels", models_pb2.ListModelsRequest(), "", ()),
        ("PromoteModel", models_pb2.PromoteModelRequest(name="m", version=1), "", ()),
        ("CreatePolicy", admin_pb2.CreatePolicyRequest(spec=spec), "", ()),
        # An existing policy's: an update reads the policy before it checks the merged spec.
        ("UpdatePolicy", admin_pb2.UpdatePolicyRequest(spec=admin_pb2.PolicySpec(name="demo")), "", ()),
        ("GetPolicy", admin_pb2.GetPolicyRequest(name="demo"), "", ()),
        ("SnapshotPolicy", admin_pb2.SnapshotPolicyRequest(name="demo"), "", ()),
        ("GetPolicyStats", admin_pb2.GetPolicyStatsRequest(name="demo"), "", ()),
        ("ListPolicies", admin_pb2.ListPoliciesRequest(), "", ()),
        ("EvaluatePolicy", admin_pb2.EvaluatePolicyRequest(name="demo"), "", ()),
        ("TunePolicy", admin_pb2.TunePolicyRequest(name="demo"), "", ()),
        ("ImportEvents", admin_pb2.ImportBatch(policy="demo"), "", ()),
        ("ExportEvents", admin_pb2.ExportEventsRequest(name="demo"), "", ()),
        ("CreateKey", admin_pb2.CreateKeyRequest(roles=["decide"], name="table"), "", ()),
        ("RevokeKey", admin_pb2.RevokeKeyRequest(id="nope"), "", ()),
        ("ListAudit", admin_pb2.ListAuditRequest(), "", ()),
    ]
    cases: list[Case] = []
    for rpc, base, prefix, skip in bases:
        cases.extend(_cases_for(rpc, base, settings, prefix, skip))
    return cases + _invalid_values(event_id)


def _invalid_values(event_id: str) -> list[Case]:
    """Values within every bound that are wrong all the same, each with its fitting status."""
    nf, fp, ae = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS
    f, ns, act = common_pb2.Feature, common_pb2.Namespace, common_pb2.Action
    decide, reward = decisions_pb2.DecideRequest, feedback_pb2.RewardEvent
    retrieve, spec = retrieval_pb2.RetrieveRequest, admin_pb2.PolicySpec
    two = [act(id="a"), act(id="b")]
    return [
        Case("Decide", "no policy", decide(), ("policy",)),
        Case("Decide", "an unknown policy", decide(policy="nope"), ("policy",), nf),
        Case("Decide", "duplicate action ids", decide(policy="demo", actions=[act(id="a"), act(id="a")]),
             ("actions[1].id",)),
        Case("Decide", "an empty action id", decide(policy="demo", actions=[act(id="")]), ("actions[0].id",)),
        Case("Decide", "an empty namespace name", decide(policy="demo", context=[ns(name="")]), ("context[0].name",)),
        Case("Decide", "an empty feature name", decide(policy="demo", context=[ns(name="u", features=[f(str="x")])]),
             ("context[0].features[0].name",)),
        Case("Decide", "a feature with no value", decide(policy="demo", context=[ns(name="u", features=[f(name="a")])]),
             ("context[0].features[0].value",)),
        Case("Decide", "a NUL in the event id", decide(policy="demo", event_id="a\x00b"), ("event_id",)),
        Case("Decide", "two slots of a cb policy", decide(policy="demo", slots=2), ("slots",)),
        Case("ReportReward", "no event id", reward(value=1.0), ("event_id",)),
        Case("ReportReward", "a NUL in the reward id", reward(event_id=event_id, reward_id="r\x00"), ("reward_id",)),
        Case("ReportReward", "an unknown event", reward(event_id="no-such-event", value=1.0), ("event_id",), nf),
        Case("Retrieve", "an empty query", retrieve(policy="retrieval"), ("query",)),
        Case("Retrieve", "a query of punctuation", retrieve(policy="retrieval", query="?!"), ("query",)),
        Case("Retrieve", "an unknown strategy", retrieve(policy="retrieval", query="jazz", fixed_plan={"nope": 10}),
             ("fixed_plan.nope",)),
        Case("Retrieve", "a plan that runs nothing", retrieve(policy="retrieval", query="jazz",
                                                              fixed_plan={"lexical": 0}), ("fixed_plan",)),
        Case("Retrieve", "not a retrieval policy", retrieve(policy="demo", query="jazz"), ("policy",), fp),
        Case("Search", "an empty query", search_pb2.SearchRequest(policy="retrieval"), ("query",)),
        Case("Search", "a NUL in the user id", search_pb2.SearchRequest(policy="retrieval", query="jazz",
                                                                         user_id="a\x00"), ("user_id",)),
        Case("Search", "an order by a model without its name",
             search_pb2.SearchRequest(policy="retrieval", query="jazz", order=search_pb2.PAGE_ORDER_MODEL), ("model",)),
        Case("Search", "an order by a model that does not exist",
             search_pb2.SearchRequest(policy="retrieval", query="jazz", order=search_pb2.PAGE_ORDER_MODEL,
                                      model="nope"), ("nope",), nf),
        Case("Search", "not a retrieval policy", search_pb2.SearchRequest(policy="demo", query="jazz"), ("policy",),
             fp),
        Case("XmrPredict", "no queries", models_pb2.XmrPredictRequest(model="m"), ("queries",)),
        Case("XmrPredict", "a query without letters", models_pb2.XmrPredictRequest(model="m", queries=["--"]),
             ("queries[0]",)),
        Case("XmrPredict", "no model", models_pb2.XmrPredictRequest(queries=["jazz"]), ("model",)),
        Case("Autocomplete", "an empty prefix", models_pb2.AutocompleteRequest(model="m"), ("prefix",)),
        Case("RecordQuery", "no session", models_pb2.RecordQueryRequest(query="jazz"), ("session_id",)),
        Case("RecordQuery", "a query without letters", models_pb2.RecordQueryRequest(session_id="s", query="!!"),
             ("query",)),
        Case("CreatePolicy", "a name with a space", admin_pb2.CreatePolicyRequest(spec=spec(name="a b", actions=two)),
             ("spec.name",)),
        Case("CreatePolicy", "a negative epsilon",
             admin_pb2.CreatePolicyRequest(spec=spec(name="e", epsilon=-0.5, actions=two)), ("spec.epsilon",)),
        Case("CreatePolicy", "a one-letter interaction",
             admin_pb2.CreatePolicyRequest(spec=spec(name="i", interactions=["x"], actions=two)),
             ("spec.interactions[0]",)),
        Case("CreatePolicy", "two slots of a cb policy",
             admin_pb2.CreatePolicyRequest(spec=spec(name="s", slots=2, actions=two)), ("spec.slots",)),
        Case("CreatePolicy", "a policy that exists", admin_pb2.CreatePolicyRequest(spec=spec(name="demo", actions=two)),
             ("spec.name",), ae),
        Case("GetPolicy", "an unknown policy", admin_pb2.GetPolicyRequest(name="nope"), ("nope",), nf),
        Case("GetPolicy", "no name", admin_pb2.GetPolicyRequest(), ("name",)),
        Case("PromoteModel", "no version", models_pb2.PromoteModelRequest(name="m"), ("version",)),
        Case("PromoteModel", "an unknown model", models_pb2.PromoteModelRequest(name="nope", version=1), ("nope",), nf),
    ]


_SERVICE_OF = {m.name: s.full_name for s in _services() for m in s.methods}
_SERVER_STREAMING = {m.name for s in _services() for m in s.methods if m.server_streaming and not m.client_streaming}


@pytest.fixture(scope="module")
def table_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("bounds")
    server = ServerThread(retrieval_server_settings(f"sqlite:///{tmp / 'ltrr.db'}", Path(tmp / "data")))
    yield server
    server.stop()


def _call(server: ServerThread, rpc: str, request: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details a request gets (for streams: of its answer in the stream)."""
    channel = server.channel()
    method = f"/{_SERVICE_OF[rpc]}/{rpc}"
    try:
        if rpc == "DecideStream":
            stub = decisions_pb2_grpc.DecisionServiceStub(channel)
            [answer] = list(stub.DecideStream(iter([request]), timeout=30))
            return grpc.StatusCode.INVALID_ARGUMENT if answer.error.code == 3 else grpc.StatusCode.OK, \
                answer.error.message
        if rpc == "StreamRewards":
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            acks = [a for batch in stub.StreamRewards(iter([request]), timeout=30) for a in batch.acks]
            bad = [a for a in acks if a.status == feedback_pb2.REWARD_STATUS_INVALID]
            return (grpc.StatusCode.INVALID_ARGUMENT if bad and len(bad) == len(acks) else grpc.StatusCode.OK,
                    bad[0].message if bad else "")
        if rpc in _SERVER_STREAMING:
            answers = channel.unary_stream(method, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=lambda b: b)
            list(answers(request, timeout=30))
            return grpc.StatusCode.OK, ""
        if rpc == "ImportEvents":
            results = channel.stream_stream(method, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=admin_pb2.ImportBatchResult.FromString)
            [result] = list(results(iter([request]), timeout=30))
            # A bad line is answered in the batch's result; the stream goes on.
            return (grpc.StatusCode.INVALID_ARGUMENT if result.errors else grpc.StatusCode.OK,
                    result.errors[0].message if result.errors else "")
        raw = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=lambda b: b)
        raw(request, timeout=30)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    finally:
        channel.close()


def _healthy(server: ServerThread) -> bool:
    with server.channel() as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_bad_requests_get_invalid_argument_naming_the_field(table_server: ServerThread) -> None:
    event_id = decisions_pb2_grpc.DecisionServiceStub(table_server.channel()).Decide(decide_request("demo")).event_id
    cases = _bad_requests(table_server.settings, event_id)
    # With the requests that do not decode (below, on every RPC): over 150 bad requests.
    assert len(cases) + len(UNDECODABLE) * len(_SERVICE_OF) >= 150 and len(cases) >= 150, len(cases)
    assert {c.rpc for c in cases} >= set(_SERVICE_OF) - {"ListPolicies", "ListKeys"}
    wrong = []
    for case in cases:
        code, details = _call(table_server, case.rpc, case.request)
        # A stream's acks are per event: they name the event's own field.
        fields = {f.removeprefix("events[0].") if case.rpc == "StreamRewards" else f for f in case.fields}
        if code != case.code or not any(f in details for f in fields):
            wrong.append(f"{case.id}: {code.name} {details[:160]!r}")
        elif "x" * 300 in details:
            wrong.append(f"{case.id}: the details echo the oversized value")
    assert not wrong, f"{len(wrong)} of {len(cases)} bad requests answered wrongly:\n" + "\n".join(wrong)
    assert _healthy(table_server)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# Bytes no request message decodes from: a string field cut short, invalid UTF-8 in the first
# string field (every request's field 1 is a string or a message), and groups nested 200 deep.
UNDECODABLE: dict[str, bytes] = {
    "truncated": b"\x0a\x05ab",
    "invalid UTF-8": b"\x0a\x02\xff\xfe",
    "nested 200 deep": _varint((99 << 3) | 3) * 200 + _varint((99 << 3) | 4) * 200,
}


@pytest.mark.parametrize("what", sorted(UNDECODABLE))
def test_requests_that_do_not_decode_get_invalid_argument_on_every_rpc(table_server: ServerThread, what: str) -> None:
    data = UNDECODABLE[what]
    wrong = []
    for rpc, service in sorted(_SERVICE_OF.items()):
        if what == "invalid UTF-8" and rpc in ("ListPolicies", "ListKeys", "ListAudit"):
            continue  # no string field 1: bytes there are an unknown field, skipped as protobuf says
        if what == "invalid UTF-8" and rpc in ("CreatePolicy", "UpdatePolicy", "StreamRewards"):
            data_here = b"\x0a\x04\x0a\x02\xff\xfe"  # the message in field 1, then its string field 1
        else:
            data_here = data
        with table_server.channel() as ch:
            if rpc == "DecideStream":
                stream = ch.stream_stream(f"/{service}/{rpc}", request_serializer=None,
                                          response_deserializer=decisions_pb2.DecideResponse.FromString)
                [answer] = list(stream(iter([data_here]), timeout=30))
                code, details = (grpc.StatusCode.INVALID_ARGUMENT if answer.error.code == 3 else grpc.StatusCode.OK,
                                 answer.error.message)
            else:
                try:
                    if rpc in ("StreamRewards", "ImportEvents"):
                        list(ch.stream_stream(f"/{service}/{rpc}")(iter([data_here]), timeout=30))
                    elif rpc in _SERVER_STREAMING:
                        list(ch.unary_stream(f"/{service}/{rpc}")(data_here, timeout=30))
                    else:
                        ch.unary_unary(f"/{service}/{rpc}")(data_here, timeout=30)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as err:
                    code, details = err.code(), err.details() or ""
        if code != grpc.StatusCode.INVALID_ARGUMENT or "request: not a valid ltrr.v1." not in details \
                or "Error" in details or "<class" in details:
            wrong.append(f"{rpc}: {code.name} {details!r}")
    assert not wrong, "\n".join(wrong)
    assert _healthy(table_server)


def test_the_table_covers_every_bound_kind() -> None:
    kinds = {type(b) for b in BOUNDS.values()}
    assert kinds == {Text, Items, Number, Enum, Nested, Free}
    cases = _bad_requests(retrieval_server_settings("sqlite://", Path("unused")), "e")
    whats = [c.what for c in cases]
    assert any("NaN" in w for w in whats) and any("unknown enum" in w for w in whats)
    assert any("entries" in w for w in whats) and any("items" in w for w in whats)

