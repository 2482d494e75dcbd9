"""The ceiling for the decision benchmarks: a grpc.aio server that does no work.

It serves the same methods with the same message types as ltrr's DecisionService and answers
each request with a fixed, realistic DecideResponse (4 actions): the cost of gRPC and protobuf
alone, driven by the same client as ltrr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ltrr.v1 import decisions_pb2, decisions_pb2_grpc

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


async def main(port: int) -> None:
    server = grpc.aio.server()
    decisions_pb2_grpc.add_DecisionServiceServicer_to_server(Echo(), server)
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
