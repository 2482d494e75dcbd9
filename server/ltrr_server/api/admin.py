"""AdminService: policies, snapshots, statistics; evaluation, tuning, import and export of the log."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable

from ltrr.v1 import admin_pb2
from ltrr_server.api import convert
from ltrr_server.api.auth import caller
from ltrr_server.api.evaluation import (
    candidate_from_proto,
    plan_from_proto,
    result_to_proto,
    time_range,
    tune_to_proto,
)
from ltrr_server.api.routes import Undecodable
from ltrr_server.api.status import Ctx
from ltrr_server.api.streams import answered_in_order
from ltrr_server.audit import AuditLog
from ltrr_server.config import Limits, PolicySpec, check_name
from ltrr_server.core.imports import ImportResult, Imports
from ltrr_server.core.policies import PolicyBook
from ltrr_server.core.rewards import Rewards
from ltrr_server.core.tuning import tune
from ltrr_server.errors import InvalidArgument
from ltrr_server.jobs import Jobs, Progress
from ltrr_server.log.export import ExportJob
from ltrr_server.ope.evaluate import EvaluateJob
from ltrr_server.policy.runtime import PolicyRuntime
from ltrr_server.tenancy import SEP, inside, outside, owned

# ImportEvents: batches parsed and queued ahead of the one whose commit is awaited.
_IMPORT_AHEAD = 4


class AdminServicer:
    def __init__(self, policies: PolicyBook, rewards: Rewards, jobs: Jobs, imports: Imports, limits: Limits,
                 audit: AuditLog) -> None:
        self._policies = policies
        self._audit = audit
        self._rewards = rewards
        self._jobs = jobs
        self._imports = imports
        self._limits = limits

    def _spec(self, proto: admin_pb2.PolicySpec) -> PolicySpec:
        """A spec from a request, named in the caller's tenant."""
        spec = convert.spec_from_proto(proto, self._limits)
        if SEP in spec.name:
            check_name(spec.name, "spec.name")
        return dataclasses.replace(spec, name=inside(caller().tenant, spec.name, "spec.name"))

    def _policy(self, name: str, field: str = "name") -> PolicyRuntime:
        """The caller's tenant's policy ``name`` (another tenant's is not found)."""
        return self._policies.get(inside(caller().tenant, name, field), field)

    async def CreatePolicy(  # noqa: N802
        self, request: admin_pb2.CreatePolicyRequest, context: Ctx
    ) -> admin_pb2.Policy:
        spec = self._spec(request.spec)
        info = await self._policies.create(spec)
        await asyncio.to_thread(self._audit.record, caller(), "policy.create", spec.name, None, spec.to_dict())
        return convert.policy_to_proto(info)

    async def UpdatePolicy(  # noqa: N802
        self, request: admin_pb2.UpdatePolicyRequest, context: Ctx
    ) -> admin_pb2.UpdatePolicyResponse:
        check_name(request.spec.name, "spec.name")
        paths = convert.update_paths(request.spec, request.update_mask.paths)
        name = inside(caller().tenant, request.spec.name, "spec.name")
        changed = await self._policies.update(
            name, lambda before: self._spec(convert.spec_update(before, request.spec, paths)))
        await asyncio.to_thread(self._audit.record, caller(), "policy.reset" if changed.reset else "policy.update",
                                name, changed.before.to_dict(), changed.info.spec.to_dict())
        return admin_pb2.UpdatePolicyResponse(policy=convert.policy_to_proto(changed.info), model_reset=changed.reset)

    async def ListPolicies(  # noqa: N802
        self, request: admin_pb2.ListPoliciesRequest, context: Ctx
    ) -> admin_pb2.ListPoliciesResponse:
        return admin_pb2.ListPoliciesResponse(
            policies=[convert.policy_to_proto(p) for p in self._policies.list_infos()
                      if owned(caller().tenant, p.spec.name)]
        )

    async def GetPolicy(  # noqa: N802
        self, request: admin_pb2.GetPolicyRequest, context: Ctx
    ) -> admin_pb2.Policy:
        return convert.policy_to_proto(self._policies.get_info(self._policy(request.name).spec.name))

    async def SnapshotPolicy(  # noqa: N802
        self, request: admin_pb2.SnapshotPolicyRequest, context: Ctx
    ) -> admin_pb2.Snapshot:
        s = await self._policies.snapshot(self._policy(request.name).spec.name)
        return admin_pb2.Snapshot(
            snapshot_id=s.snapshot_id, policy=outside(s.policy), model_version=s.model_version,
            last_joined_seq=s.last_joined_seq, created_at_ms=int(s.created_at * 1000), size_bytes=s.size_bytes,
        )

    async def GetPolicyStats(  # noqa: N802
        self, request: admin_pb2.GetPolicyStatsRequest, context: Ctx
    ) -> admin_pb2.PolicyStats:
        stats = await self._policies.stats(self._policy(request.name).spec.name) | self._rewards.stats()
        return admin_pb2.PolicyStats(policy=request.name, **stats)  # type: ignore[arg-type]

    async def EvaluatePolicy(  # noqa: N802
        self, request: admin_pb2.EvaluatePolicyRequest, context: Ctx
    ) -> AsyncIterator[admin_pb2.EvaluatePolicyUpdate]:
        plan = plan_from_proto(request, self._policy(request.name), self._limits)
        async for item in self._jobs.run(EvaluateJob(plan)):
            if isinstance(item, Progress):
                yield admin_pb2.EvaluatePolicyUpdate(events_done=item.done, events_total=item.total)
            else:
                yield admin_pb2.EvaluatePolicyUpdate(events_done=item.events, events_total=item.events,
                                                     result=result_to_proto(item))

    async def TunePolicy(  # noqa: N802
        self, request: admin_pb2.TunePolicyRequest, context: Ctx
    ) -> AsyncIterator[admin_pb2.TunePolicyUpdate]:
        rt = self._policy(request.name)
        since, until = time_range(request.since_ms, request.until_ms)
        if len(request.candidates) > self._limits.max_evaluation_targets:
            raise InvalidArgument("candidates", f"{len(request.candidates)} candidates, more than "
                                                f"limits.max_evaluation_targets={self._limits.max_evaluation_targets}")
        candidates = [candidate_from_proto(c, rt.spec, self._limits, f"candidates[{i}]")
                      for i, c in enumerate(request.candidates)]
        async for item in tune(self._policies, self._jobs, rt.spec.name, candidates, since, until,
                               request.apply):
            if isinstance(item, Progress):
                yield admin_pb2.TunePolicyUpdate(events_done=item.done, events_total=item.total)
            else:
                if item.applied and item.info is not None:
                    await asyncio.to_thread(self._audit.record, caller(), "policy.tune", rt.spec.name,
                                            rt.spec.to_dict(), item.info.spec.to_dict())
                yield admin_pb2.TunePolicyUpdate(events_done=item.events, events_total=item.events,
                                                 result=tune_to_proto(item))

    async def ImportEvents(  # noqa: N802
        self, requests: AsyncIterator[admin_pb2.ImportBatch | Undecodable], context: Ctx
    ) -> AsyncIterator[admin_pb2.ImportBatchResult]:
        # Each batch is queued whole and answered once committed, in order; the next is parsed while
        # the last commits (at most _IMPORT_AHEAD ahead), so a stream that ends early leaves whole batches.
        async for committed in answered_in_order(requests, self._submit_import, _IMPORT_AHEAD):
            result = await committed
            yield admin_pb2.ImportBatchResult(
                imported=result.imported, duplicates=result.duplicates,
                errors=[admin_pb2.LineError(line=n, message=m) for n, m in result.errors])

    async def _submit_import(self, batch: admin_pb2.ImportBatch | Undecodable) -> Awaitable[ImportResult]:
        if isinstance(batch, Undecodable):
            raise batch.error
        return await self._imports.submit(inside(caller().tenant, batch.policy, "policy"), list(batch.lines),
                                          batch.first_line, batch.validate_only)

    async def ExportEvents(  # noqa: N802
        self, request: admin_pb2.ExportEventsRequest, context: Ctx
    ) -> AsyncIterator[admin_pb2.ExportChunk]:
        rt = self._policy(request.name)
        since, until = time_range(request.since_ms, request.until_ms)
        async for item in self._jobs.run(ExportJob(rt.spec.name, since, until)):
            if isinstance(item, Progress):
                yield admin_pb2.ExportChunk(events_done=item.done, events_total=item.total)
            else:
                yield admin_pb2.ExportChunk(lines=item.lines, events_done=item.done, events_total=item.total)
