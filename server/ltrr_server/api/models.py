"""ModelService: XR-Linear inference, autocompletion and its sessions, the model registry, promotion."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ltrr.v1 import models_pb2
from ltrr_server.api.auth import caller
from ltrr_server.api.status import Ctx
from ltrr_server.api.xmr_wire import XmrResponseWire
from ltrr_server.audit import AuditLog
from ltrr_server.core.models import Models
from ltrr_server.core.sessions import Sessions


def version_to_proto(row: dict[str, Any]) -> models_pb2.ModelVersion:
    return models_pb2.ModelVersion(
        name=row["name"], version=row["version"], kind=row["kind"], live=bool(row["live"]),
        metrics_json=json.dumps(row["metrics"], sort_keys=True), created_at=row["created_at"],
    )


class ModelServicer:
    def __init__(self, models: Models, sessions: Sessions, audit: AuditLog) -> None:
        self._models = models
        self._audit = audit
        self._sessions = sessions
        self._xmr_wire = XmrResponseWire()

    async def XmrPredict(  # noqa: N802 - gRPC method name
        self, request: models_pb2.XmrPredictRequest, context: Ctx
    ) -> models_pb2.XmrPredictResponse:
        version, model, ranked = await self._models.xmr_predict(request.model, list(request.queries), request.k,
                                                                request.beam_size)
        return self._xmr_wire.response(version, model, ranked)

    async def Autocomplete(  # noqa: N802
        self, request: models_pb2.AutocompleteRequest, context: Ctx
    ) -> models_pb2.AutocompleteResponse:
        version, completions = await self._models.autocomplete(
            request.model, request.prefix, list(request.previous_queries), request.session_id, request.k)
        return models_pb2.AutocompleteResponse(model_version=version, completions=[
            models_pb2.Completion(query=q, score=s) for q, s in completions])

    async def RecordQuery(  # noqa: N802
        self, request: models_pb2.RecordQueryRequest, context: Ctx
    ) -> models_pb2.RecordQueryResponse:
        return models_pb2.RecordQueryResponse(
            session_queries=self._sessions.record(request.session_id, request.query))

    async def ListModels(  # noqa: N802
        self, request: models_pb2.ListModelsRequest, context: Ctx
    ) -> models_pb2.ListModelsResponse:
        rows = await self._models.versions(request.name)
        return models_pb2.ListModelsResponse(models=[version_to_proto(r) for r in rows])

    async def PromoteModel(  # noqa: N802
        self, request: models_pb2.PromoteModelRequest, context: Ctx
    ) -> models_pb2.PromoteModelResponse:
        r = await self._models.promote(request.name, request.version, request.force)
        await asyncio.to_thread(
            self._audit.record, caller(), "model.force_promote" if request.force else "model.promote", request.name,
            {"version": r["previous_version"]},
            {k: v for k, v in r.items() if k not in ("row", "previous_version")} | {"version": request.version})
        return models_pb2.PromoteModelResponse(
            model=version_to_proto(r["row"]), previous_version=r["previous_version"],
            recall_previous=r.get("recall_live", 0.0), recall_new=r.get("recall_new", 0.0),
            negative_flip_rate=r.get("negative_flip_rate", 0.0),
        )
