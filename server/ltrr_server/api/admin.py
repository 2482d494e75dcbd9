"""AdminService: policies, snapshots, statistics."""

from __future__ import annotations

from ltrr.v1 import admin_pb2
from ltrr_server.api import convert
from ltrr_server.api.status import Ctx
from ltrr_server.config import Limits
from ltrr_server.core.policies import PolicyBook
from ltrr_server.core.rewards import Rewards


class AdminServicer:
    def __init__(self, policies: PolicyBook, rewards: Rewards, limits: Limits) -> None:
        self._policies = policies
        self._rewards = rewards
        self._limits = limits

    async def CreatePolicy(  # noqa: N802
        self, request: admin_pb2.CreatePolicyRequest, context: Ctx
    ) -> admin_pb2.Policy:
        spec = convert.spec_from_proto(request.spec, self._limits)
        return convert.policy_to_proto(await self._policies.create(spec))

    async def UpdatePolicy(  # noqa: N802
        self, request: admin_pb2.UpdatePolicyRequest, context: Ctx
    ) -> admin_pb2.UpdatePolicyResponse:
        spec = convert.spec_from_proto(request.spec, self._limits)
        info, reset = await self._policies.update(spec)
        return admin_pb2.UpdatePolicyResponse(policy=convert.policy_to_proto(info), model_reset=reset)

    async def ListPolicies(  # noqa: N802
        self, request: admin_pb2.ListPoliciesRequest, context: Ctx
    ) -> admin_pb2.ListPoliciesResponse:
        return admin_pb2.ListPoliciesResponse(
            policies=[convert.policy_to_proto(p) for p in self._policies.list_infos()]
        )

    async def GetPolicy(  # noqa: N802
        self, request: admin_pb2.GetPolicyRequest, context: Ctx
    ) -> admin_pb2.Policy:
        return convert.policy_to_proto(self._policies.get_info(request.name))

    async def SnapshotPolicy(  # noqa: N802
        self, request: admin_pb2.SnapshotPolicyRequest, context: Ctx
    ) -> admin_pb2.Snapshot:
        s = await self._policies.snapshot(request.name)
        return admin_pb2.Snapshot(
            snapshot_id=s.snapshot_id, policy=s.policy, model_version=s.model_version,
            last_joined_seq=s.last_joined_seq, created_at_ms=int(s.created_at * 1000), size_bytes=s.size_bytes,
        )

    async def GetPolicyStats(  # noqa: N802
        self, request: admin_pb2.GetPolicyStatsRequest, context: Ctx
    ) -> admin_pb2.PolicyStats:
        stats = await self._policies.stats(request.name) | self._rewards.stats()
        return admin_pb2.PolicyStats(policy=request.name, **stats)  # type: ignore[arg-type]
