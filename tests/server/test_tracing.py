"""OpenTelemetry traces from a real server to a real OTLP/gRPC collector (``tests/otlp.py``)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ltrr.v1 import decisions_pb2_grpc, feedback_pb2_grpc, search_pb2_grpc
from ltrr_client.client import decide_request, reward_event, search_request
from ltrr_server.config import Settings
from ltrr_server.errors import InvalidArgument
from ltrr_server.metrics import Metrics
from ltrr_server.supervisor import Supervisor
from ltrr_server.tracing import Tracing
from tests.conftest import ServerThread, free_port, retrieval_policy, retrieval_server_settings, server_settings
from tests.helpers import wait_for
from tests.otlp import Collector


@pytest.fixture
def collector() -> Any:
    c = Collector()
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def quick_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: the SDK's own setting (5 s by default)


def _caller() -> tuple[str, str, tuple[tuple[str, str]]]:
    """A caller's own trace: its trace id, its span id and the metadata that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def test_a_search_trace_shows_the_call_the_plan_the_strategies_the_ranking_the_commit_and_the_learner(
        make_server: Any, db_url: str, tmp_path: Path, collector: Collector) -> None:
    settings = retrieval_server_settings(db_url, tmp_path / "data", tracing="otlp",
                                         tracing_endpoint=collector.endpoint)
    settings = Settings(**{**vars(settings), "policies": (retrieval_policy(join_window_seconds=1.0),
                                                          *settings.policies[1:])})
    s: ServerThread = make_server(settings)
    ch = s.channel()
    for _ in range(50):
        # The policy draws its plan; on this small catalog a plan of one strategy can find nothing,
        # and an empty page has no item to engage with.
        trace_id, caller_span, metadata = _caller()
        page = search_pb2_grpc.SearchServiceStub(ch).Search(search_request("retrieval", "mellow jazz", page_size=5),
                                                            metadata=metadata)
        if page.results:
            break
    assert page.results, "50 searches, every page empty"
    reward_trace, _, reward_metadata = _caller()
    feedback_pb2_grpc.FeedbackServiceStub(ch).ReportReward(
        reward_event(page.event_id, 1.0, engaged=[page.results[0].item_id]), metadata=reward_metadata)

    ran = {f"strategy {part.split(':')[0]}" for part in page.plan.split("+")}
    names = {"ltrr.v1.SearchService/Search", "decide", "rank", "commit", "learn", *ran}
    spans = wait_for(lambda: (t := collector.trace(trace_id)) and names <= {x.name for x in t} and t,
                     timeout=30, what="the search's spans")
    assert {x.name for x in spans} == names  # one span each: no strategy the plan did not run
    by_name = {x.name: x for x in spans}
    call = by_name["ltrr.v1.SearchService/Search"]
    assert call.parent_span_id.hex() == caller_span  # the caller's trace continues
    assert call.kind == call.SPAN_KIND_SERVER
    for name in names - {call.name}:
        assert by_name[name].parent_span_id == call.span_id, name
        assert by_name[name].start_time_unix_nano >= call.start_time_unix_nano, name
    attributes = {x.name: {a.key: a.value for a in x.attributes} for x in spans}
    assert attributes["decide"]["ltrr.event_id"].string_value == page.event_id
    assert attributes["decide"]["ltrr.policy"].string_value == "retrieval"
    for name in ran:
        assert attributes[name]["ltrr.budget"].int_value > 0
    assert attributes["rank"]["ltrr.page_size"].int_value == 5
    assert attributes["learn"]["ltrr.reward"].double_value != 0.0  # the engaged item was on the page
    # The strategies ran inside the call; the commit and the learner came after it was answered.
    for name in (*ran, "rank"):
        assert by_name[name].end_time_unix_nano <= call.end_time_unix_nano, name
    assert by_name["learn"].end_time_unix_nano > call.end_time_unix_nano
    # The learning also belongs to the reward's own trace: a link to its call's span.
    reward_call = wait_for(lambda: [x for x in collector.trace(reward_trace)
                                    if x.name == "ltrr.v1.FeedbackService/ReportReward"],
                           timeout=30, what="the reward call's span")[0]
    assert [(x.trace_id.hex(), x.span_id) for x in by_name["learn"].links] == [(reward_trace, reward_call.span_id)]


def test_a_refused_call_says_why_and_a_caller_that_says_not_sampled_is_not_traced(
        make_server: Any, db_url: str, collector: Collector) -> None:
    s: ServerThread = make_server(server_settings(db_url, tracing="otlp", tracing_endpoint=collector.endpoint))
    stub = decisions_pb2_grpc.DecisionServiceStub(s.channel())
    trace_id, _, metadata = _caller()
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(decide_request("no-such-policy", {}), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    [refused] = wait_for(lambda: collector.trace(trace_id), timeout=30, what="the refused call's span")
    assert refused.name == "ltrr.v1.DecisionService/Decide"
    attributes = {a.key: a.value for a in refused.attributes}
    assert attributes["rpc.grpc.status_code"].int_value == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-policy" in attributes["ltrr.status_message"].string_value
    # The caller's mistake, not the server's: no error status (OpenTelemetry's RPC conventions).
    assert refused.status.code == refused.status.STATUS_CODE_UNSET

    unsampled = secrets.token_hex(16)
    stub.Decide(decide_request("demo", {}), metadata=(("traceparent", f"00-{unsampled}-{secrets.token_hex(8)}-00"),))
    sampled, _, metadata = _caller()
    stub.Decide(decide_request("demo", {}), metadata=metadata)
    wait_for(lambda: collector.trace(sampled), timeout=30, what="the sampled call's spans")
    assert collector.trace(unsampled) == []


def test_a_stream_of_requests_is_one_span_not_one_per_message(make_server: Any, db_url: str,
                                                             collector: Collector) -> None:
    s: ServerThread = make_server(server_settings(db_url, tracing="otlp", tracing_endpoint=collector.endpoint))
    stub = decisions_pb2_grpc.DecisionServiceStub(s.channel())
    trace_id, caller_span, metadata = _caller()
    answers = list(stub.DecideStream(iter([decide_request("demo", {})] * 50), metadata=metadata))
    assert len(answers) == 50
    [stream] = wait_for(lambda: collector.trace(trace_id), timeout=30, what="the stream's span")
    assert stream.name == "ltrr.v1.DecisionService/DecideStream" and stream.parent_span_id.hex() == caller_span
    time.sleep(1.0)  # a batch or two more: no decide or commit span may follow
    assert [x.name for x in collector.trace(trace_id)] == [stream.name]


def test_without_a_traceparent_the_sample_ratio_decides(make_server: Any, db_url: str, collector: Collector) -> None:
    s: ServerThread = make_server(server_settings(db_url, tracing="otlp", tracing_endpoint=collector.endpoint,
                                                  tracing_sample_ratio=0.0))
    stub = decisions_pb2_grpc.DecisionServiceStub(s.channel())
    for _ in range(20):
        stub.Decide(decide_request("demo", {}))
    sampled, _, metadata = _caller()
    stub.Decide(decide_request("demo", {}), metadata=metadata)  # the caller's sampled trace is continued
    wait_for(lambda: collector.trace(sampled), timeout=30, what="the caller's trace")
    assert {x.trace_id.hex() for x in collector.spans} == {sampled}


def test_a_collector_that_is_away_neither_fails_calls_nor_holds_the_stop(make_server: Any, db_url: str) -> None:
    s: ServerThread = make_server(server_settings(db_url, tracing="otlp",
                                                  tracing_endpoint=f"http://127.0.0.1:{free_port()}",
                                                  shutdown_timeout_seconds=2.0))
    stub = decisions_pb2_grpc.DecisionServiceStub(s.channel())
    for _ in range(50):
        assert stub.Decide(decide_request("demo", {})).event_id
    # The export thread is a supervised part; a collector away is not a part down.
    assert s.registry.get_sample_value("ltrr_component_up", {"component": "tracing"}) == 1.0
    started = time.monotonic()
    s.stop()
    assert time.monotonic() - started < 8.0


class _Fatal(BaseException):
    """What no handler in the SDK's export thread catches: the thread dies of it."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the fault injected
def test_a_dead_span_export_thread_is_restarted_and_spans_reach_the_collector_again(collector: Collector) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    fatal = [True]

    class DiesOnce(OTLPSpanExporter):
        def export(self, spans: Any) -> Any:
            if fatal:
                fatal.clear()
                raise _Fatal
            return super().export(spans)

    metrics = Metrics(CollectorRegistry())
    supervisor = Supervisor(metrics)
    tracing = Tracing("otlp", collector.endpoint, exporter=lambda: DiesOnce(endpoint=collector.endpoint, insecure=True))
    supervisor.watch(tracing)
    try:
        tracing.tracer.start_span("lost").end()
        wait_for(lambda: not tracing.running(), timeout=30, what="the export thread to die")
        supervisor.check_once()  # seen down, restarted
        assert metrics.registry.get_sample_value("ltrr_component_up", {"component": "tracing"}) == 0.0
        assert tracing.running()
        supervisor.check_once()  # seen up again
        tracing.tracer.start_span("after").end()
        wait_for(lambda: [x for x in collector.spans if x.name == "after"], timeout=30, what="the span after")
        assert metrics.registry.get_sample_value("ltrr_component_restarts_total", {"component": "tracing"}) == 1.0
        assert metrics.registry.get_sample_value("ltrr_component_up", {"component": "tracing"}) == 1.0
    finally:
        tracing.shutdown(5)


@pytest.mark.parametrize(("changes", "field"), [
    ({"tracing": "jaeger"}, "server.tracing"),
    ({"tracing": "otlp", "tracing_sample_ratio": 1.5}, "server.tracing_sample_ratio"),
    ({"tracing": "otlp", "tracing_sample_ratio": float("nan")}, "server.tracing_sample_ratio"),
    ({"tracing": "otlp", "tracing_endpoint": "127.0.0.1 4317"}, "server.tracing_endpoint"),
])
def test_bad_tracing_settings_name_the_setting(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        Settings(**changes)
    assert err.value.field == field
