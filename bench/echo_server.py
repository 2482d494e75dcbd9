"""The ceiling for the decision benchmarks: a grpc.aio server that does no work.

It serves the same methods with the same message types as ltrr's DecisionService and answers
each request with a fixed, realistic DecideResponse (4 actions): the cost of gRPC and protobuf
alone, driven by the same client as ltrr. ``XmrEcho`` does the same for ModelService.XmrPredict:
``k`` fixed labels per query.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ltrr.v1 import decisions_pb2, decisions_pb2_grpc, models_pb2, models_pb2_grpc

RESPONSE = decisions_pb2.DecideResponse(
    event_id="0" * 32, chosen_action_id="music", probability=0.9625, model_version=12,
    probabilities=[decisions_pb2.ActionProbability(action_id=a, probability=p)
                   for a, p in (("news", 0.0125), ("sports", 0.0125), ("music", 0.9625), ("movies", 0.0125))],
)


class Echo(decisions_pb2_grpc.DecisionServiceServicer):
    async def Decide(self, request: Any, context: Any) -> decisions_pb2.DecideResponse:  # noqa: N802
        return RESPONSE

    async def DecideStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for _ in request_iterator:
            yield RESPONSE


class XmrEcho(models_pb2_grpc.ModelServiceServicer):
    """Answers every query with ``k`` labels that look like item ids, without predicting anything."""

    def __init__(self) -> None:
        self._answers: dict[tuple[int, int], models_pb2.XmrPredictResponse] = {}

    async def XmrPredict(self, request: Any, context: Any) -> models_pb2.XmrPredictResponse:  # noqa: N802
        key = (len(request.queries), request.k or 10)
        if key not in self._answers:  # built once per shape: the echo measures transport alone
            one = models_pb2.XmrPrediction(labels=[models_pb2.ScoredLabel(id=f"song-{i:06d}", score=1.0 / (i + 1))
                                                   for i in range(key[1])])
            self._answers[key] = models_pb2.XmrPredictResponse(model_version=1, predictions=[one] * key[0])
        return self._answers[key]


async def main(port: int) -> None:
    server = grpc.aio.server()
    decisions_pb2_grpc.add_DecisionServiceServicer_to_server(Echo(), server)
    models_pb2_grpc.add_ModelServiceServicer_to_server(XmrEcho(), server)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer

    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
