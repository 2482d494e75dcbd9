"""AdminService: policies, snapshots, statistics."""

from __future__ import annotations

from ltrr.v1 import admin_pb2, admin_pb2_grpc
from ltrr_server.api import convert
from ltrr_server.api.status import Ctx, unary
from ltrr_server.core import Ltrr
from ltrr_server.metrics import Metrics


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, core: Ltrr, metrics: Metrics) -> None:
        self._core = core
        self._metrics = metrics
        self._max_features = core.limits.max_features

    @unary("CreatePolicy")
    async def CreatePolicy(  # noqa: N802
        self, request: admin_pb2.CreatePolicyRequest, context: Ctx
    ) -> admin_pb2.Policy:
        spec = convert.spec_from_proto(request.spec, self._max_features)
        return convert.policy_to_proto(await self._core.create_policy(spec))

    @unary("UpdatePolicy")
    async def UpdatePolicy(  # noqa: N802
        self, request: admin_pb2.UpdatePolicyRequest, context: Ctx
    ) -> admin_pb2.UpdatePolicyResponse:
        spec = convert.spec_from_proto(request.spec, self._max_features)
        info, reset = await self._core.update_policy(spec)
        return admin_pb2.UpdatePolicyResponse(policy=convert.policy_to_proto(info), model_reset=reset)

    @unary("ListPolicies")
    async def ListPolicies(  # noqa: N802
        self, request: admin_pb2.ListPoliciesRequest, context: Ctx
    ) -> admin_pb2.ListPoliciesResponse:
        return admin_pb2.ListPoliciesResponse(
            policies=[convert.policy_to_proto(p) for p in self._core.list_policies()]
        )

    @unary("GetPolicy")
    async def GetPolicy(  # noqa: N802
        self, request: admin_pb2.GetPolicyRequest, context: Ctx
    ) -> admin_pb2.Policy:
        return convert.policy_to_proto(self._core.get_policy(request.name))

    @unary("SnapshotPolicy")
    async def SnapshotPolicy(  # noqa: N802
        self, request: admin_pb2.SnapshotPolicyRequest, context: Ctx
    ) -> admin_pb2.Snapshot:
        s = await self._core.snapshot(request.name)
        return admin_pb2.Snapshot(
            snapshot_id=s.snapshot_id, policy=s.policy, model_version=s.model_version,
            last_joined_seq=s.last_joined_seq, created_at_ms=int(s.created_at * 1000), size_bytes=s.size_bytes,
        )

    @unary("GetPolicyStats")
    async def GetPolicyStats(  # noqa: N802
        self, request: admin_pb2.GetPolicyStatsRequest, context: Ctx
    ) -> admin_pb2.PolicyStats:
        stats = await self._core.stats(request.name)
        return admin_pb2.PolicyStats(policy=request.name, **stats)  # type: ignore[arg-type]
