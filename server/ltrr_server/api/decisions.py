"""DecisionService: Decide and DecideStream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ltrr.v1 import common_pb2, decisions_pb2
from ltrr_server import errors
from ltrr_server.api import convert
from ltrr_server.api.auth import caller
from ltrr_server.api.decision_wire import DecisionWire
from ltrr_server.api.routes import Undecodable
from ltrr_server.api.status import Ctx, code_for, message_for
from ltrr_server.api.streams import answered_in_order
from ltrr_server.bounds import REQUEST_ID_CHARS
from ltrr_server.config import Limits
from ltrr_server.core.decisions import Decisions
from ltrr_server.metrics import Metrics
from ltrr_server.tenancy import inside


class DecisionServicer:
    def __init__(self, decisions: Decisions, metrics: Metrics, limits: Limits) -> None:
        self._decisions = decisions
        self._metrics = metrics
        self._max_features = limits.max_features
        self._stream_bound = limits.max_stream_unsent_decisions
        self._wire = DecisionWire()

    def _decide(self, req: decisions_pb2.DecideRequest) -> decisions_pb2.DecideResponse:
        convert.check_request_id(req.request_id)
        context = convert.namespaces(req.context, "context", self._max_features)
        acts = convert.actions(req.actions, "actions", self._max_features) if req.actions else None
        policy = inside(caller().tenant, req.policy, "policy")
        d = self._decisions.decide(policy, context, acts, req.event_id, req.slots, req.baseline_action_id)
        if len(d.slots) == 1:
            return self._wire.response(d, req.request_id)
        return convert.decision_to_proto(d, req.request_id)

    async def Decide(  # noqa: N802 - gRPC method name
        self, request: decisions_pb2.DecideRequest, context: Ctx
    ) -> decisions_pb2.DecideResponse:
        if request.event_id:
            await self._decisions.check_new_event_id(request.event_id)
        return self._decide(request)

    async def DecideStream(  # noqa: N802
        self, request_iterator: AsyncIterator[decisions_pb2.DecideRequest], context: Ctx
    ) -> AsyncIterator[decisions_pb2.DecideResponse]:
        async for response in answered_in_order(request_iterator, self._answer_in_stream, self._stream_bound):
            yield response

    async def _answer_in_stream(self, req: decisions_pb2.DecideRequest | Undecodable) -> decisions_pb2.DecideResponse:
        """A decision, or the error in its place: one bad request does not end the stream."""
        start = time.perf_counter()
        request_id = ""
        try:
            if isinstance(req, Undecodable):
                raise req.error
            if len(req.request_id) <= REQUEST_ID_CHARS:  # echoed in an error too, if not too long
                request_id = req.request_id
            if req.event_id:
                await self._decisions.check_new_event_id(req.event_id)
            resp = self._decide(req)
            self._metrics.observe_rpc("DecideStream", "OK", time.perf_counter() - start)
        except errors.LtrrError as exc:
            code = code_for(exc)
            self._metrics.observe_rpc("DecideStream", code.name, time.perf_counter() - start)
            resp = decisions_pb2.DecideResponse(
                request_id=request_id,
                error=common_pb2.Error(code=code.value[0], message=message_for(exc), field=exc.field),
            )
        return resp
