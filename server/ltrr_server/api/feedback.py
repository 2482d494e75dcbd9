"""FeedbackService: ReportReward and StreamRewards. Acks go out only after the commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

import grpc

from ltrr.v1 import feedback_pb2
from ltrr_server import errors
from ltrr_server.api import convert
from ltrr_server.api.auth import caller
from ltrr_server.api.routes import Undecodable
from ltrr_server.api.status import Ctx, code_for, message_for
from ltrr_server.api.streams import answered_in_order
from ltrr_server.config import Limits
from ltrr_server.core.rewards import RewardResult, Rewards
from ltrr_server.log.joiner import Outcome
from ltrr_server.metrics import Metrics


class FeedbackServicer:
    def __init__(self, rewards: Rewards, metrics: Metrics, limits: Limits) -> None:
        self._rewards = rewards
        self._metrics = metrics
        self._inflight = limits.max_stream_inflight_batches

    async def ReportReward(  # noqa: N802
        self, request: feedback_pb2.RewardEvent, context: Ctx
    ) -> feedback_pb2.RewardAck:
        reward = convert.reward_input(request)
        [result] = await self._rewards.report([reward], caller().tenant)
        if result.outcome == Outcome.INVALID:
            raise errors.InvalidArgument("", result.message)
        if result.outcome == Outcome.UNKNOWN:
            raise errors.NotFound(result.message, field="event_id")
        return convert.reward_ack(reward, result)

    async def _ack_batch(self, batch: feedback_pb2.RewardBatch) -> feedback_pb2.RewardAckBatch:
        start = time.perf_counter()
        rewards = [convert.reward_input(ev) for ev in batch.events]
        try:
            results = await self._rewards.report(rewards, caller().tenant)
            code = grpc.StatusCode.OK
            out = convert.reward_acks(rewards, results)
        except errors.LtrrError as exc:
            # The whole batch was refused before anything was stored (bound reached, too large):
            # every event says so, and the stream goes on.
            code = code_for(exc)
            refused = RewardResult(Outcome.INVALID, f"{code.name}: {message_for(exc)}")
            out = convert.reward_acks(rewards, [refused] * len(rewards))
        self._metrics.observe_rpc("StreamRewards", code.name, time.perf_counter() - start)
        return out

    async def StreamRewards(  # noqa: N802
        self, request_iterator: AsyncIterator[feedback_pb2.RewardBatch], context: Ctx
    ) -> AsyncIterator[feedback_pb2.RewardAckBatch]:
        # Batches are submitted as they arrive and acked in order as their commits land: at most
        # max_stream_inflight_batches commits are awaited at once.
        async for acks in answered_in_order(request_iterator, self._submit_batch, self._inflight):
            yield await acks

    async def _submit_batch(
        self, batch: feedback_pb2.RewardBatch | Undecodable
    ) -> Awaitable[feedback_pb2.RewardAckBatch]:
        if isinstance(batch, Undecodable):
            # Its events cannot be named in acks: the stream ends here, after the acks before it.
            self._metrics.observe_rpc("StreamRewards", "INVALID_ARGUMENT", 0.0)
            raise batch.error
        return asyncio.ensure_future(self._ack_batch(batch))
