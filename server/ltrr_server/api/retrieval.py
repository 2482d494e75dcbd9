"""RetrievalService: Retrieve."""

from __future__ import annotations

from ltrr.v1 import retrieval_pb2
from ltrr_server.api import convert
from ltrr_server.api.auth import caller
from ltrr_server.api.status import Ctx
from ltrr_server.config import Limits
from ltrr_server.core.decisions import Decisions, Retrieval
from ltrr_server.retrieval.retriever import RetrievalResult
from ltrr_server.tenancy import inside


def strategy_runs(res: RetrievalResult) -> list[retrieval_pb2.StrategyRun]:
    return [retrieval_pb2.StrategyRun(strategy=run.strategy, budget=run.budget, returned=len(run.hits),
                                      latency_ms=run.seconds * 1000.0, error=run.error) for run in res.runs]


def retrieval_to_proto(r: Retrieval, limit: int, request_id: str) -> retrieval_pb2.RetrieveResponse:
    res = r.result
    n = min(limit, len(res)) if limit else len(res)
    hit, cand = retrieval_pb2.StrategyHit, retrieval_pb2.Candidate
    return retrieval_pb2.RetrieveResponse(
        event_id=r.decision.event_id,
        candidates=[cand(item_id=item_id, fused_score=score, hits=[hit(strategy=s, score=sc, rank=rank)
                                                                   for s, sc, rank in prov])
                    for item_id, score, prov in zip(res.item_ids[:n], res.fused_scores[:n], res.provenance[:n],
                                                    strict=True)],
        plan=r.result.plan.id, probability=r.probability,
        strategies=strategy_runs(res),
        model_version=r.decision.model_version, request_id=request_id, total_candidates=len(res),
    )


class RetrievalServicer:
    def __init__(self, decisions: Decisions, limits: Limits) -> None:
        self._decisions = decisions
        self._max_features = limits.max_features

    async def Retrieve(  # noqa: N802 - gRPC method name
        self, request: retrieval_pb2.RetrieveRequest, context: Ctx
    ) -> retrieval_pb2.RetrieveResponse:
        convert.check_request_id(request.request_id)
        ctx = convert.namespaces(request.context, "context", self._max_features)
        if request.event_id:
            await self._decisions.check_new_event_id(request.event_id)
        r = await self._decisions.retrieve(
            inside(caller().tenant, request.policy, "policy"), request.query, ctx, list(request.query_embedding),
            request.event_id, dict(request.fixed_plan) or None,
        )
        return retrieval_to_proto(r, request.limit, request.request_id)
