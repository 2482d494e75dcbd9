"""Typed clients for ltrr's gRPC API, sync and asyncio, with plain-dict feature helpers.

Features are ``{namespace: {feature: value}}``; a string value is a category, a number a weight.

>>> [ns.name for ns in namespaces({"user": {"segment": "a", "age": 31}})]
['user']
>>> actions(["news", "sports"])[1].id
'sports'
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from ltrr.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    decisions_pb2,
    decisions_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    models_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)

FeatureDict = Mapping[str, Mapping[str, str | float | int]]


def namespaces(features: FeatureDict | None) -> list[common_pb2.Namespace]:
    """``{"user": {"segment": "a"}}`` as request namespaces."""
    out = []
    for ns, feats in (features or {}).items():
        items = []
        for name, value in feats.items():
            if isinstance(value, str):
                items.append(common_pb2.Feature(name=name, str=value))
            else:
                items.append(common_pb2.Feature(name=name, num=float(value)))
        out.append(common_pb2.Namespace(name=ns, features=items))
    return out


def actions(items: Iterable[str | tuple[str, FeatureDict]]) -> list[common_pb2.Action]:
    """Action ids, or (id, features) pairs, as request actions."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(common_pb2.Action(id=item))
        else:
            out.append(common_pb2.Action(id=item[0], features=namespaces(item[1])))
    return out


def decide_request(
    policy: str, context: FeatureDict | None = None, action_list: Sequence[str | tuple[str, FeatureDict]] = (),
    event_id: str = "", slots: int = 0, request_id: str = "", baseline: str = "",
) -> decisions_pb2.DecideRequest:
    return decisions_pb2.DecideRequest(
        policy=policy, context=namespaces(context), actions=actions(action_list), event_id=event_id,
        slots=slots, request_id=request_id, baseline_action_id=baseline,
    )


def retrieve_request(
    policy: str, query: str, context: FeatureDict | None = None, embedding: Sequence[float] = (),
    fixed_plan: Mapping[str, int] | None = None, limit: int = 0, event_id: str = "",
) -> retrieval_pb2.RetrieveRequest:
    """A RetrieveRequest from plain Python values.

    >>> retrieve_request("retrieval", "blue train", fixed_plan={"lexical": 10}).fixed_plan["lexical"]
    10
    """
    req = retrieval_pb2.RetrieveRequest(policy=policy, query=query, context=namespaces(context),
                                        query_embedding=list(embedding), limit=limit, event_id=event_id)
    if fixed_plan:
        req.fixed_plan.update(fixed_plan)
    return req


PAGE_ORDERS = {"ranker": search_pb2.PAGE_ORDER_RANKER, "fusion": search_pb2.PAGE_ORDER_FUSION,
               "popularity": search_pb2.PAGE_ORDER_POPULARITY, "model": search_pb2.PAGE_ORDER_MODEL}


def search_request(
    policy: str, query: str, context: FeatureDict | None = None, user_id: str = "", page_size: int = 0,
    embedding: Sequence[float] = (), fixed_plan: Mapping[str, int] | None = None, order: str = "ranker",
    event_id: str = "", model: str = "",
) -> search_pb2.SearchRequest:
    """A SearchRequest from plain Python values (``order``: ranker, fusion, popularity, or model with
    ``model`` naming a trained ranker).

    >>> search_request("retrieval", "blue train", user_id="u1", order="fusion").order == search_pb2.PAGE_ORDER_FUSION
    True
    """
    req = search_pb2.SearchRequest(policy=policy, query=query, context=namespaces(context), user_id=user_id,
                                   page_size=page_size, query_embedding=list(embedding), order=PAGE_ORDERS[order],
                                   event_id=event_id, model=model)
    if fixed_plan:
        req.fixed_plan.update(fixed_plan)
    return req


def reward_event(
    event_id: str, value: float, reward_id: str = "", engaged: Sequence[str] = (),
    oracle_best: float | None = None, oracle_chosen: float | None = None,
) -> feedback_pb2.RewardEvent:
    ev = feedback_pb2.RewardEvent(event_id=event_id, value=value, reward_id=reward_id, engaged_item_ids=engaged)
    if oracle_best is not None:
        ev.oracle_best_value = oracle_best
    if oracle_chosen is not None:
        ev.oracle_chosen_value = oracle_chosen
    return ev


@dataclass(frozen=True)
class ChannelTls:
    """TLS for a channel: the CA that signed the server's certificate (empty: the system's roots),
    and for mutual TLS the client's own certificate chain and key (PEM files)."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(root_certificates=read(self.ca), private_key=read(self.key),
                                            certificate_chain=read(self.cert))


class _BearerKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <key>`` to every call of a blocking channel."""

    def __init__(self, key: str) -> None:
        self._metadata = ("authorization", f"Bearer {key}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _AsyncBearerKey(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                      grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <key>`` to every call of an asyncio channel."""

    def __init__(self, key: str) -> None:
        self._metadata = ("authorization", f"Bearer {key}")

    def _details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._metadata)
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


# Calls that are safe to repeat: reads, and rewards (stored once per event and reward id).
IDEMPOTENT = {
    "ltrr.v1.FeedbackService": ["ReportReward"],
    "ltrr.v1.AdminService": ["ListPolicies", "GetPolicy", "GetPolicyStats", "ListKeys", "ListAudit"],
    "ltrr.v1.ModelService": ["XmrPredict", "Autocomplete", "ListModels"],
}


# How often an ltrr server lets a client ping by default (its server.client_ping_min_seconds).
PING_FLOOR_MS = 10_000


def channel_options(keepalive_ms: int = 30_000, retries: int = 4, ping_floor_ms: int = PING_FLOOR_MS
                    ) -> list[tuple[str, Any]]:
    """Channel options: keepalive pings on an idle channel, and gRPC's own retries with exponential
    backoff for the idempotent calls refused with UNAVAILABLE or RESOURCE_EXHAUSTED (gRPC waits the
    server's ``grpc-retry-pushback-ms`` when it sends one, as ltrr does past a quota).

    ``keepalive_ms`` is 0 (no pings) or at least ``ping_floor_ms``, how often the server lets a
    client ping: a client pinging faster has its idle streams ended (GOAWAY too_many_pings).

    >>> dict(channel_options(retries=1))["grpc.enable_retries"], dict(channel_options())["grpc.keepalive_time_ms"]
    (0, 30000)
    >>> channel_options(keepalive_ms=2000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: keepalive_ms: 2000, more often than the server lets a client ping (every 10000 ms: ...
    """
    if 0 < keepalive_ms < ping_floor_ms:
        # Until 2026-12-01 grpc's own limit of 2 pings without data hid it: the pings soon stopped.
        raise ValueError(f"keepalive_ms: {keepalive_ms}, more often than the server lets a client ping (every "
                         f"{ping_floor_ms} ms: its server.client_ping_min_seconds); 0 for no pings")
    config = {"methodConfig": [{
        "name": [{"service": service, "method": m} for service, methods in IDEMPOTENT.items() for m in methods],
        "retryPolicy": {"maxAttempts": max(retries, 2), "initialBackoff": "0.1s", "maxBackoff": "5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]},
    }]}
    options: list[tuple[str, Any]] = [("grpc.enable_retries", 1 if retries > 1 else 0),
                                      ("grpc.service_config", json.dumps(config))]
    if keepalive_ms > 0:
        # On a quiet stream too: grpc stops after 2 pings without data by default, and an idle
        # reward stream whose server vanished then waited for its acks until TCP gave up (hours).
        # Any ping unanswered as long ends the connection: a keepalive ping waits behind one
        # already in flight (flow control's), which grpc otherwise gives a minute.
        timeout_ms = min(10_000, keepalive_ms)
        options += [("grpc.keepalive_time_ms", keepalive_ms), ("grpc.keepalive_timeout_ms", timeout_ms),
                    ("grpc.http2.ping_timeout_ms", timeout_ms), ("grpc.http2.max_pings_without_data", 0)]
    return options


def channel(target: str, tls: ChannelTls | None = None, api_key: str = "", keepalive_ms: int = 30_000,
            retries: int = 4, ping_floor_ms: int = PING_FLOOR_MS) -> grpc.Channel:
    """A blocking channel: plaintext, or TLS with ``tls``; with ``api_key``, every call carries it;
    keepalive and retries as ``channel_options`` says."""
    options = channel_options(keepalive_ms, retries, ping_floor_ms)
    ch = (grpc.secure_channel(target, tls.credentials(), options=options) if tls is not None
          else grpc.insecure_channel(target, options=options))
    return grpc.intercept_channel(ch, _BearerKey(api_key)) if api_key else ch


def aio_channel(target: str, tls: ChannelTls | None = None, api_key: str = "", keepalive_ms: int = 30_000,
                retries: int = 4, ping_floor_ms: int = PING_FLOOR_MS) -> grpc.aio.Channel:
    """An asyncio channel, as ``channel``."""
    interceptors = [_AsyncBearerKey(api_key)] if api_key else None
    options = channel_options(keepalive_ms, retries, ping_floor_ms)
    if tls is not None:
        return grpc.aio.secure_channel(target, tls.credentials(), options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


class LtrrClient:
    """Blocking client. With a server running (tests/clients exercise it)::

        with LtrrClient("localhost:50051") as c:
            d = c.decide("demo", {"user": {"segment": "s1"}})
            c.report_reward(d.event_id, 1.0).status   # REWARD_STATUS_ACCEPTED, once committed
    """

    def __init__(self, target: str, timeout: float = 10.0, tls: ChannelTls | None = None, api_key: str = "",
                 keepalive_ms: int = 30_000, retries: int = 4, ping_floor_ms: int = PING_FLOOR_MS) -> None:
        """``api_key``: sent with every call as ``authorization: Bearer <key>`` (server.auth = "keys");
        ``retries``: attempts of an idempotent call in all (1: none); ``keepalive_ms``: 0 for none,
        else at least ``ping_floor_ms``, the server's client_ping_min_seconds (``channel_options``)."""
        self.channel = channel(target, tls, api_key, keepalive_ms, retries, ping_floor_ms)
        self.timeout = timeout
        self.decisions = decisions_pb2_grpc.DecisionServiceStub(self.channel)
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)
        self.search_service = search_pb2_grpc.SearchServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)

    def __enter__(self) -> LtrrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def decide(self, policy: str, context: FeatureDict | None = None,
               actions: Sequence[str | tuple[str, FeatureDict]] = (), event_id: str = "",
               slots: int = 0, baseline: str = "") -> decisions_pb2.DecideResponse:
        """``baseline``: your own choice, which a policy in apprentice mode serves and learns from."""
        req = decide_request(policy, context, actions, event_id, slots, baseline=baseline)
        return self.decisions.Decide(req, timeout=self.timeout)

    def retrieve(self, policy: str, query: str, context: FeatureDict | None = None, embedding: Sequence[float] = (),
                 fixed_plan: Mapping[str, int] | None = None, limit: int = 0) -> retrieval_pb2.RetrieveResponse:
        """Candidates for a query from the plan the policy picks (or ``fixed_plan``)."""
        req = retrieve_request(policy, query, context, embedding, fixed_plan, limit)
        return self.retrieval.Retrieve(req, timeout=self.timeout)

    def search(self, policy: str, query: str, context: FeatureDict | None = None, user_id: str = "",
               page_size: int = 0, embedding: Sequence[float] = (), fixed_plan: Mapping[str, int] | None = None,
               order: str = "ranker", model: str = "") -> search_pb2.SearchResponse:
        """The ranked page for a query: the policy's plan retrieves, the ranker orders (or ``order``)."""
        req = search_request(policy, query, context, user_id, page_size, embedding, fixed_plan, order, model=model)
        return self.search_service.Search(req, timeout=self.timeout)

    def decide_stream(self, requests: Iterable[decisions_pb2.DecideRequest]) -> Iterator[decisions_pb2.DecideResponse]:
        return self.decisions.DecideStream(iter(requests))

    def report_reward(self, event_id: str, value: float, reward_id: str = "", engaged: Sequence[str] = (),
                      oracle_best: float | None = None, oracle_chosen: float | None = None) -> feedback_pb2.RewardAck:
        ev = reward_event(event_id, value, reward_id, engaged, oracle_best, oracle_chosen)
        return self.feedback.ReportReward(ev, timeout=self.timeout)

    def stream_rewards(self, batches: Iterable[Sequence[feedback_pb2.RewardEvent]]
                       ) -> Iterator[feedback_pb2.RewardAckBatch]:
        """Sends batches of reward events; yields one ack batch per batch, once it is committed."""
        return self.feedback.StreamRewards(
            feedback_pb2.RewardBatch(events=list(b)) for b in batches
        )

    def list_policies(self) -> list[admin_pb2.Policy]:
        return list(self.admin.ListPolicies(admin_pb2.ListPoliciesRequest(), timeout=self.timeout).policies)

    def get_policy(self, name: str) -> admin_pb2.Policy:
        return self.admin.GetPolicy(admin_pb2.GetPolicyRequest(name=name), timeout=self.timeout)

    def create_policy(self, spec: admin_pb2.PolicySpec) -> admin_pb2.Policy:
        return self.admin.CreatePolicy(admin_pb2.CreatePolicyRequest(spec=spec), timeout=self.timeout)

    def update_policy(self, spec: admin_pb2.PolicySpec, update_mask: Sequence[str] = ()
                      ) -> admin_pb2.UpdatePolicyResponse:
        """Changes the fields ``update_mask`` names (none: the fields ``spec`` sets; ``["*"]``: all)."""
        request = admin_pb2.UpdatePolicyRequest(spec=spec, update_mask=FieldMask(paths=list(update_mask)))
        return self.admin.UpdatePolicy(request, timeout=self.timeout)

    def snapshot(self, name: str) -> admin_pb2.Snapshot:
        return self.admin.SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name=name), timeout=60)

    def stats(self, name: str) -> admin_pb2.PolicyStats:
        return self.admin.GetPolicyStats(admin_pb2.GetPolicyStatsRequest(name=name), timeout=self.timeout)

    def evaluate(self, request: admin_pb2.EvaluatePolicyRequest, timeout: float = 3600.0
                 ) -> admin_pb2.PolicyEvaluation:
        """Counterfactual estimates (EvaluatePolicy), once done; its progress is skipped."""
        result: admin_pb2.PolicyEvaluation = _last_result(self.admin.EvaluatePolicy(request, timeout=timeout))
        return result

    def tune(self, request: admin_pb2.TunePolicyRequest, timeout: float = 3600.0) -> admin_pb2.TuneResult:
        """Candidate configurations replayed and ranked (TunePolicy), once done."""
        result: admin_pb2.TuneResult = _last_result(self.admin.TunePolicy(request, timeout=timeout))
        return result

    def export_dsjson(self, name: str, since_ms: int = 0, until_ms: int = 0, timeout: float = 3600.0
                      ) -> Iterator[str]:
        """The policy's joined decisions as DSJSON lines (ExportEvents)."""
        request = admin_pb2.ExportEventsRequest(name=name, since_ms=since_ms, until_ms=until_ms)
        for chunk in self.admin.ExportEvents(request, timeout=timeout):
            yield from chunk.lines

    def create_key(self, roles: Sequence[str], tenant: str = "", name: str = "", subject: str = "",
                   decisions_per_second: int = 0, rewards_per_second: int = 0, max_streams: int = 0
                   ) -> admin_pb2.CreateKeyResponse:
        """A new API key (its text in ``.secret``, shown this once) for the caller's tenant."""
        return self.admin.CreateKey(admin_pb2.CreateKeyRequest(
            tenant=tenant, roles=list(roles), name=name, subject=subject, decisions_per_second=decisions_per_second,
            rewards_per_second=rewards_per_second, max_streams=max_streams), timeout=self.timeout)

    def list_keys(self) -> list[admin_pb2.ApiKey]:
        return list(self.admin.ListKeys(admin_pb2.ListKeysRequest(), timeout=self.timeout).keys)

    def revoke_key(self, key_id: str) -> admin_pb2.ApiKey:
        return self.admin.RevokeKey(admin_pb2.RevokeKeyRequest(id=key_id), timeout=self.timeout)

    def audit(self, since_ms: int = 0, limit: int = 0) -> list[admin_pb2.AuditEntry]:
        """Admin changes of the caller's tenant, oldest first."""
        return list(self.admin.ListAudit(admin_pb2.ListAuditRequest(since_ms=since_ms, limit=limit),
                                         timeout=self.timeout).entries)


def _last_result(updates: Iterable[Any]) -> Any:
    for update in updates:
        if update.HasField("result"):
            return update.result
    raise RuntimeError("the server ended the stream without a result")


class AsyncLtrrClient:
    """asyncio client; same verbs as ``LtrrClient``, awaited."""

    def __init__(self, target: str, timeout: float = 10.0, tls: ChannelTls | None = None, api_key: str = "",
                 keepalive_ms: int = 30_000, retries: int = 4, ping_floor_ms: int = PING_FLOOR_MS) -> None:
        self.channel = aio_channel(target, tls, api_key, keepalive_ms, retries, ping_floor_ms)
        self.timeout = timeout
        self.decisions = decisions_pb2_grpc.DecisionServiceStub(self.channel)
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)
        self.search_service = search_pb2_grpc.SearchServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)

    async def __aenter__(self) -> AsyncLtrrClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def decide(self, policy: str, context: FeatureDict | None = None,
                     actions: Sequence[str | tuple[str, FeatureDict]] = (), event_id: str = "",
                     slots: int = 0) -> decisions_pb2.DecideResponse:
        req = decide_request(policy, context, actions, event_id, slots)
        return await self.decisions.Decide(req, timeout=self.timeout)

    async def retrieve(self, policy: str, query: str, context: FeatureDict | None = None,
                       embedding: Sequence[float] = (), fixed_plan: Mapping[str, int] | None = None,
                       limit: int = 0) -> retrieval_pb2.RetrieveResponse:
        req = retrieve_request(policy, query, context, embedding, fixed_plan, limit)
        return await self.retrieval.Retrieve(req, timeout=self.timeout)

    async def search(self, policy: str, query: str, context: FeatureDict | None = None, user_id: str = "",
                     page_size: int = 0, embedding: Sequence[float] = (),
                     fixed_plan: Mapping[str, int] | None = None, order: str = "ranker",
                     model: str = "") -> search_pb2.SearchResponse:
        req = search_request(policy, query, context, user_id, page_size, embedding, fixed_plan, order, model=model)
        return await self.search_service.Search(req, timeout=self.timeout)

    async def report_reward(self, event_id: str, value: float, reward_id: str = "", engaged: Sequence[str] = (),
                            oracle_best: float | None = None, oracle_chosen: float | None = None
                            ) -> feedback_pb2.RewardAck:
        ev = reward_event(event_id, value, reward_id, engaged, oracle_best, oracle_chosen)
        return await self.feedback.ReportReward(ev, timeout=self.timeout)

    def stream_rewards(self, batches: AsyncIterator[feedback_pb2.RewardBatch]
                       ) -> grpc.aio.StreamStreamCall[feedback_pb2.RewardBatch, feedback_pb2.RewardAckBatch]:
        return self.feedback.StreamRewards(batches)

    async def stats(self, name: str) -> admin_pb2.PolicyStats:
        return await self.admin.GetPolicyStats(
            admin_pb2.GetPolicyStatsRequest(name=name), timeout=self.timeout
        )
