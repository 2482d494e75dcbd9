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
from ltrr_server.bounds import ID_CHARS
from ltrr_server.core.models import Models, check_model_name
from ltrr_server.core.sessions import Sessions, check_session_id
from ltrr_server.errors import InvalidArgument
from ltrr_server.tenancy import DEFAULT_TENANT, inside, outside, owned


def version_to_proto(row: dict[str, Any]) -> models_pb2.ModelVersion:
    return models_pb2.ModelVersion(
        name=outside(row["name"]), version=row["version"], kind=row["kind"], live=bool(row["live"]),
        metrics_json=json.dumps(row["metrics"], sort_keys=True), created_at=row["created_at"],
    )


def _model(name: str, field: str) -> str:
    """The caller's tenant's model ``name`` (another tenant's is not found)."""
    check_model_name(name, field, ID_CHARS)
    return inside(caller().tenant, name, field, "model")


def _session(session_id: str, required: bool) -> str:
    """The server's key of a caller's session: a tenant's sessions are its own."""
    check_session_id(session_id, required, ID_CHARS)
    if "\x00" in session_id:
        raise InvalidArgument("session_id", "holds a NUL character")
    tenant = caller().tenant
    return f"{tenant}\x00{session_id}" if session_id and tenant != DEFAULT_TENANT else session_id


class ModelServicer:
    def __init__(self, models: Models, sessions: Sessions, audit: AuditLog) -> None:
        self._models = models
        self._audit = audit
        self._sessions = sessions
        self._xmr_wire = XmrResponseWire()

    async def XmrPredict(  # noqa: N802 - gRPC method name
        self, request: models_pb2.XmrPredictRequest, context: Ctx
    ) -> models_pb2.XmrPredictResponse:
        version, model, ranked = await self._models.xmr_predict(
            _model(request.model, "model"), list(request.queries), request.k, request.beam_size)
        return self._xmr_wire.response(version, model, ranked)

    async def Autocomplete(  # noqa: N802
        self, request: models_pb2.AutocompleteRequest, context: Ctx
    ) -> models_pb2.AutocompleteResponse:
        version, completions = await self._models.autocomplete(
            _model(request.model, "model"), request.prefix, list(request.previous_queries),
            _session(request.session_id, False), request.k)
        return models_pb2.AutocompleteResponse(model_version=version, completions=[
            models_pb2.Completion(query=q, score=s) for q, s in completions])

    async def RecordQuery(  # noqa: N802
        self, request: models_pb2.RecordQueryRequest, context: Ctx
    ) -> models_pb2.RecordQueryResponse:
        return models_pb2.RecordQueryResponse(
            session_queries=self._sessions.record(_session(request.session_id, True), request.query))

    async def ListModels(  # noqa: N802
        self, request: models_pb2.ListModelsRequest, context: Ctx
    ) -> models_pb2.ListModelsResponse:
        tenant = caller().tenant
        if len(request.name) > ID_CHARS:
            raise InvalidArgument("name", f"longer than {ID_CHARS} characters")
        rows = await self._models.versions(inside(tenant, request.name, "name", "model"))
        return models_pb2.ListModelsResponse(models=[version_to_proto(r) for r in rows if owned(tenant, r["name"])])

    async def PromoteModel(  # noqa: N802
        self, request: models_pb2.PromoteModelRequest, context: Ctx
    ) -> models_pb2.PromoteModelResponse:
        name = _model(request.name, "name")
        r = await self._models.promote(name, request.version, request.force)
        await asyncio.to_thread(
            self._audit.record, caller(), "model.force_promote" if request.force else "model.promote", name,
            {"version": r["previous_version"]},
            {k: v for k, v in r.items() if k not in ("row", "previous_version")} | {"version": request.version})
        return models_pb2.PromoteModelResponse(
            model=version_to_proto(r["row"]), previous_version=r["previous_version"],
            recall_previous=r.get("recall_live", 0.0), recall_new=r.get("recall_new", 0.0),
            negative_flip_rate=r.get("negative_flip_rate", 0.0),
        )
