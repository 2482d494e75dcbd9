"""SearchService: Search."""

from __future__ import annotations

from ltrr.v1 import retrieval_pb2, search_pb2
from ltrr_server.api import convert
from ltrr_server.api.auth import caller
from ltrr_server.api.retrieval import strategy_runs
from ltrr_server.api.status import Ctx
from ltrr_server.bounds import ID_CHARS
from ltrr_server.config import Limits
from ltrr_server.core.decisions import Decisions, Search
from ltrr_server.errors import InvalidArgument
from ltrr_server.ranking.ranking import FUSION, MODEL, POPULARITY, RANKER
from ltrr_server.tenancy import inside

_ORDERS = {search_pb2.PAGE_ORDER_UNSPECIFIED: RANKER, search_pb2.PAGE_ORDER_RANKER: RANKER,
           search_pb2.PAGE_ORDER_FUSION: FUSION, search_pb2.PAGE_ORDER_POPULARITY: POPULARITY,
           search_pb2.PAGE_ORDER_MODEL: MODEL}


def search_to_proto(s: Search, request_id: str) -> search_pb2.SearchResponse:
    r, page = s.retrieval, s.page
    res = r.result
    hit, result = retrieval_pb2.StrategyHit, search_pb2.SearchResult
    return search_pb2.SearchResponse(
        event_id=r.decision.event_id,
        results=[result(item_id=res.item_ids[j], score=score, position=k,
                        hits=[hit(strategy=st, score=sc, rank=rank) for st, sc, rank in res.provenance[j]])
                 for k, (j, score) in enumerate(zip(page.order, page.scores, strict=True), 1)],
        plan=res.plan.id, plan_probability=r.probability, page_probability=page.probability,
        model_version=r.decision.model_version, ranker=page.ranker, ranker_version=page.version,
        strategies=strategy_runs(res), request_id=request_id, total_candidates=len(res),
    )


class SearchServicer:
    def __init__(self, decisions: Decisions, limits: Limits) -> None:
        self._decisions = decisions
        self._max_features = limits.max_features

    async def Search(  # noqa: N802 - gRPC method name
        self, request: search_pb2.SearchRequest, context: Ctx
    ) -> search_pb2.SearchResponse:
        convert.check_request_id(request.request_id)
        ctx = convert.namespaces(request.context, "context", self._max_features)
        order = _ORDERS.get(request.order)
        if order is None:
            raise InvalidArgument("order", f"unknown page order {request.order}")
        if len(request.model) > ID_CHARS:
            raise InvalidArgument("model", f"longer than {ID_CHARS} characters")
        if request.event_id:
            await self._decisions.check_new_event_id(request.event_id)
        s = await self._decisions.search(
            inside(caller().tenant, request.policy, "policy"), request.query, ctx, request.user_id,
            request.page_size, list(request.query_embedding), request.event_id, dict(request.fixed_plan) or None,
            order, inside(caller().tenant, request.model, "model", "model"),
        )
        return search_to_proto(s, request.request_id)
