"""``xmr``: PECOS XR-Linear over the query text, serving the live version of a registered model.

Parameters: ``model`` (the registered name, default "xmr"), ``beam_size`` (0: the model's).
Until the model has a live version the strategy returns nothing; a promotion swaps the new
version in for the next call.
"""

from __future__ import annotations

from ltrr_server.strategies.base import Hit, Params, Query, StrategyEnv, register


class XmrStrategy:
    kind = "xmr"

    def __init__(self, name: str, params: Params, env: StrategyEnv) -> None:
        self.name = name
        self.beam_size = int(params.number("beam_size", 0, 0, 1000))
        self.model = params.text("model", "xmr")
        self._live = env.live_models
        self._catalog = env.catalog

    def retrieve(self, query: Query, budget: int) -> list[Hit]:
        model = self._live.maybe(self.model) if self._live is not None else None
        if model is None or budget <= 0:
            return []
        index = self._catalog.index
        preds = model.predict([query.normalized], k=budget, beam_size=self.beam_size)[0]
        return [(index[item], score) for item, score in preds if item in index]


@register("xmr")
def _create(name: str, params: Params, env: StrategyEnv) -> XmrStrategy:
    return XmrStrategy(name, params, env)
