"""Authentication, roles and quotas for every call, in one interceptor (never in the handlers).

With ``server.auth = "keys"`` every call but health's must name a key: ``authorization: Bearer
<key>``, or a client certificate (mutual TLS) whose subject a key maps. Then, once per call or
stream:

- no key: UNAUTHENTICATED; a wrong, unknown or revoked key: UNAUTHENTICATED;
- a key without the method's role (``ROLES``): PERMISSION_DENIED, naming the role;
- past a key's quota: RESOURCE_EXHAUSTED, with ``grpc-retry-pushback-ms`` in the trailing
  metadata (the delay gRPC's own retry policy honours). A stream's messages past the rate are
  not refused: the stream is read more slowly (its sender feels HTTP/2 flow control), counted in
  ``ltrr_quota_exceeded_total`` like a refusal;
- the caller's ``Identity`` is then what ``caller()`` answers inside the handler (the audit
  trail's "who", the tenant whose keys and audit an admin sees).

Reflection needs a valid key of any role; health needs none (probes carry no credentials).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from ltrr_server.api.quotas import QuotaBook
from ltrr_server.keys import ANONYMOUS, Identity, KeyRing
from ltrr_server.metrics import Metrics

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
# Which role each RPC needs, by service; a method not named takes its service's default.
_SERVICE_ROLES: dict[str, tuple[str, dict[str, str]]] = {
    "ltrr.v1.DecisionService": ("decide", {}),
    "ltrr.v1.RetrievalService": ("decide", {}),
    "ltrr.v1.SearchService": ("decide", {}),
    "ltrr.v1.FeedbackService": ("feedback", {}),
    "ltrr.v1.AdminService": ("admin", {}),
    "ltrr.v1.ModelService": ("admin", {"XmrPredict": "decide", "Autocomplete": "decide", "RecordQuery": "decide"}),
}
# The quota a call of a role draws on; admin calls have none.
_QUOTA = {"decide": "decisions", "feedback": "rewards"}

_CALLER: ContextVar[Identity] = ContextVar("ltrr_caller", default=ANONYMOUS)


def caller() -> Identity:
    """Who the running call is from (``ANONYMOUS``, every role of the default tenant, without auth)."""
    return _CALLER.get()


def method_roles(services: list[ServiceDescriptor]) -> dict[str, str]:
    """``/package.Service/Method`` -> the role it needs, for every method of ``services``."""
    out = {}
    for service in services:
        default, special = _SERVICE_ROLES[service.full_name]
        for m in service.methods:
            out[f"/{service.full_name}/{m.name}"] = special.get(m.name, default)
    return out


def _cost(message: Any) -> int:
    """Tokens a stream message takes: a reward batch one per event, anything else one."""
    events = getattr(message, "events", None)
    return len(events) if events is not None else 1


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, ring: KeyRing, roles: Mapping[str, str], metrics: Metrics,
                 quotas: QuotaBook | None = None) -> None:
        self._ring = ring
        self._roles = roles
        self._metrics = metrics
        self._quotas = quotas or QuotaBook()
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method in OPEN_METHODS:
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(method, handler))
        return cached[1]

    # ------------------------------------------------------------------ per call
    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Identity:
        """The caller, or the call aborted with the status that says why not."""
        if not self._ring.loaded:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is starting: its keys are not loaded yet")
        who, refusal = self._identify(context)
        if who is None:
            self._metrics.child(self._metrics.auth_refusals, refusal).inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSALS[refusal])
        assert who is not None
        role = self._roles.get(method)
        if role is not None and role not in who.roles:
            self._metrics.child(self._metrics.auth_refusals, "role").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{method.rsplit('/', 1)[-1]} needs the role {role!r}; key {who.key_id} has "
                                f"{', '.join(sorted(who.roles))}")
        _CALLER.set(who)  # each call runs in a task of its own: nothing to reset
        return who

    def _identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Identity | None, str]:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer":
                    return None, "scheme"
                who = self._ring.verify(token.strip())
                return (who, "") if who is not None else (None, "wrong")
        auth = context.auth_context()
        subjects = [v.decode(errors="replace") for k in ("x509_subject", "x509_common_name") for v in auth.get(k, ())]
        if subjects:
            who = self._ring.by_subject(subjects)
            if who is not None:
                return who, ""
        return None, "missing"

    async def _over_quota(self, context: grpc.aio.ServicerContext[Any, Any], who: Identity, quota: str,
                          wait: float) -> None:
        self._metrics.child(self._metrics.quota_exceeded, who.tenant, quota).inc()
        context.set_trailing_metadata((("grpc-retry-pushback-ms", str(max(1, math.ceil(wait * 1000)))),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"key {who.key_id} is over its {quota} quota: retry in {wait * 1000:.0f} ms")

    async def _paced(self, requests: AsyncIterator[Any], who: Identity, quota: str) -> AsyncIterator[Any]:
        async for message in requests:
            while (wait := self._quotas.take(who, quota, _cost(message))) > 0:
                self._metrics.child(self._metrics.quota_exceeded, who.tenant, quota).inc()
                await asyncio.sleep(wait)
            yield message

    # ------------------------------------------------------------------ handlers
    def _wrap(self, method: str, handler: Any) -> Any:
        quota = _QUOTA.get(self._roles.get(method, ""))
        quotas = self._quotas
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                who = await self._admit(context, method)
                if quota is not None and (wait := quotas.take(who, quota)) > 0:
                    await self._over_quota(context, who, quota, wait)
                return await inner_uu(request, context)

            return handler._replace(unary_unary=unary_unary)

        async def open_stream(context: Any) -> Identity:
            who = await self._admit(context, method)
            if not quotas.open_stream(who):
                await self._over_quota(context, who, "streams", 1.0)
            return who

        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                who = await open_stream(context)
                try:
                    async for answer in inner_us(request, context):
                        yield answer
                finally:
                    quotas.close_stream(who)

            return handler._replace(unary_stream=unary_stream)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
                who = await open_stream(context)
                try:
                    paced = self._paced(requests, who, quota) if quota is not None else requests
                    async for answer in inner_ss(paced, context):
                        yield answer
                finally:
                    quotas.close_stream(who)

            return handler._replace(stream_stream=stream_stream)
        # Client-streaming handlers: ltrr has none (routes refuse them); reflection's is stream-stream.
        raise NotImplementedError(f"{method}: client-streaming methods are not authenticated")


_REFUSALS = {
    "missing": "no credentials: send the metadata 'authorization: Bearer <key>' (ltrr keys create), "
               "or a client certificate a key maps",
    "wrong": "the key is wrong, unknown or revoked",
    "scheme": "authorization must read 'Bearer <key>'",
}
