"""AdminService's keys and audit trail: CreateKey, ListKeys, RevokeKey, ListAudit.

An admin key manages the keys of its own tenant and reads its own tenant's audit trail; another
tenant's key is not found. Only ``ltrr keys`` on the database itself makes keys for any tenant.
"""

from __future__ import annotations

import asyncio

from google.protobuf import struct_pb2

from ltrr.v1 import admin_pb2
from ltrr_server.api.auth import caller
from ltrr_server.api.status import Ctx
from ltrr_server.audit import AuditLog
from ltrr_server.bounds import KEY_ID_CHARS, MAX_AUDIT_ENTRIES, MAX_TIME_MS
from ltrr_server.config import check_name
from ltrr_server.errors import InvalidArgument, PermissionDenied
from ltrr_server.keys import KeyInfo, KeyRing, KeyStore, NewKey


def key_to_proto(k: KeyInfo) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        id=k.id, tenant=k.tenant, roles=list(k.roles), name=k.name, subject=k.subject,
        decisions_per_second=k.decisions_per_second or 0, rewards_per_second=k.rewards_per_second or 0,
        max_streams=k.max_streams or 0, created_at_ms=int(k.created_at * 1000),
        revoked_at_ms=int((k.revoked_at or 0) * 1000))


def _struct(value: object) -> struct_pb2.Struct | None:
    if not isinstance(value, dict):
        return None
    s = struct_pb2.Struct()
    s.update(value)
    return s


class AccessServicer:
    def __init__(self, keys: KeyStore, ring: KeyRing, audit: AuditLog) -> None:
        self._keys = keys
        self._ring = ring
        self._audit = audit

    async def CreateKey(  # noqa: N802
        self, request: admin_pb2.CreateKeyRequest, context: Ctx
    ) -> admin_pb2.CreateKeyResponse:
        who = caller()
        tenant = request.tenant or who.tenant
        check_name(tenant, "tenant")
        if tenant != who.tenant:
            raise PermissionDenied(f"a key of tenant {who.tenant!r} makes keys for that tenant only", field="tenant")
        new = NewKey(tenant, tuple(request.roles), request.name, request.subject,
                     request.decisions_per_second or None, request.rewards_per_second or None,
                     request.max_streams or None)
        info, text = await asyncio.to_thread(self._keys.create, new)
        self._ring.replace(await asyncio.to_thread(self._keys.active_rows))
        await asyncio.to_thread(self._audit.record, who, "key.create", info.id, None, info.to_dict())
        return admin_pb2.CreateKeyResponse(key=key_to_proto(info), secret=text)

    async def ListKeys(  # noqa: N802
        self, request: admin_pb2.ListKeysRequest, context: Ctx
    ) -> admin_pb2.ListKeysResponse:
        keys = await asyncio.to_thread(self._keys.list_keys, caller().tenant)
        return admin_pb2.ListKeysResponse(keys=[key_to_proto(k) for k in keys])

    async def RevokeKey(  # noqa: N802
        self, request: admin_pb2.RevokeKeyRequest, context: Ctx
    ) -> admin_pb2.ApiKey:
        who = caller()
        if not request.id:
            raise InvalidArgument("id", "is empty")
        if len(request.id) > KEY_ID_CHARS:
            raise InvalidArgument("id", f"longer than {KEY_ID_CHARS} characters")
        before, after = await asyncio.to_thread(self._keys.revoke, request.id, who.tenant)
        self._ring.drop(request.id)
        if before.revoked_at is None:
            await asyncio.to_thread(self._audit.record, who, "key.revoke", request.id, before.to_dict(),
                                    after.to_dict())
        return key_to_proto(after)

    async def ListAudit(  # noqa: N802
        self, request: admin_pb2.ListAuditRequest, context: Ctx
    ) -> admin_pb2.ListAuditResponse:
        if not 0 <= request.since_ms <= MAX_TIME_MS:
            raise InvalidArgument("since_ms", f"must be in [0, {MAX_TIME_MS}], got {request.since_ms}")
        if request.limit > MAX_AUDIT_ENTRIES:
            raise InvalidArgument("limit", f"must be at most {MAX_AUDIT_ENTRIES}, got {request.limit}")
        entries = await asyncio.to_thread(self._audit.list, caller().tenant, request.since_ms / 1000,
                                          request.limit or 1000)
        return admin_pb2.ListAuditResponse(entries=[
            admin_pb2.AuditEntry(id=e.id, at_ms=int(e.at * 1000), actor=e.actor, tenant=e.tenant, action=e.action,
                                 target=e.target, before=_struct(e.before), after=_struct(e.after))
            for e in entries])
