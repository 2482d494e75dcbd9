"""Decisions logged elsewhere, imported into a policy's log as if it had made them.

Each DSJSON line (``log/dsjson.py``) becomes a decision row (at its logged time), a reward row
("import", its logged reward) and a join, through the same joiner as the policy's own: the joined
event gets the next position in the log and goes to the learner, so the policy learns it (a warm
start) and evaluations and tunings read it like any other. A line whose event id is in the log
already is skipped as a duplicate: an import can be run again after a failure.

Parsing takes about 60 us a line (a line's actions, the same for most lines, are read and checked
once per distinct list): it runs on a worker thread, so the event loop keeps answering decisions
between the interpreter's switches; the rows are queued and joined on the event loop. The next
batch is parsed while the last one commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

from ltrr_server.bounds import DSJSON_LINE_CHARS, ID_CHARS
from ltrr_server.config import Limits
from ltrr_server.core.policies import PolicyBook
from ltrr_server.core.rewards import Rewards
from ltrr_server.errors import FailedPrecondition, InvalidArgument, LtrrError, Overloaded
from ltrr_server.features import action_line, actions_to_json, shared_line
from ltrr_server.log.dsjson import ImportedEvent, parse_line
from ltrr_server.log.joiner import PendingDecision
from ltrr_server.log.rows import DecisionRecord, RewardRow
from ltrr_server.log.store import EventLogStore
from ltrr_server.log.writer import EventLogWriter

log = logging.getLogger(__name__)

IMPORT_REWARD_ID = "import"


@dataclass
class ImportResult:
    imported: int = 0
    duplicates: int = 0
    # (line number, what is wrong with it)
    errors: list[tuple[int, str]] = field(default_factory=list)


def parse_batch(lines: list[str], first_line: int, kind: str, limits: Limits, policy_actions: Sequence[str] = ()
                ) -> tuple[list[tuple[int, ImportedEvent]], list[tuple[int, str]]]:
    """The batch's lines as events, and the errors of the lines that are not (by line number).

    A policy with configured actions (``policy_actions``) takes a line that offers at least one
    of them; a line offering none is another problem's log (a file imported into the wrong
    policy), and learning it would teach the policy actions it never serves. Until 2026-12-01
    such lines were imported. A line may offer others beside them, as Decide's own candidates may.

    Lines come as tools write files: a blank line is passed over (no decision, no error), and a
    byte order mark before a line dropped. A line over ``DSJSON_LINE_CHARS`` is one bad line: it
    ended the whole stream until 2026-12-01, as clients other than ltrr's still sent it."""
    events: list[tuple[int, ImportedEvent]] = []
    errors: list[tuple[int, str]] = []
    seen: set[str] = set()
    own = frozenset(policy_actions)
    for i, text in enumerate(lines):
        number = first_line + i
        text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            if len(text) > DSJSON_LINE_CHARS:
                raise InvalidArgument(f"lines[{i}]", f"{len(text):,} characters, more than the {DSJSON_LINE_CHARS:,} "
                                                     "a line may have")
            ev = parse_line(text, limits.max_actions, limits.max_features)
            if len(ev.event_id) > ID_CHARS or "\x00" in ev.event_id:
                raise InvalidArgument("EventId", f"longer than {ID_CHARS} characters, or holds a NUL")
            if kind == "cb" and len(ev.chosen) > 1:
                raise InvalidArgument("_outcomes", "a multi-slot decision, and the policy is a cb policy")
            if own and own.isdisjoint(ev.action_ids):
                raise InvalidArgument("c._multi", f"none of its actions ({_some(ev.action_ids)}) is one of the "
                                                  f"policy's ({_some(policy_actions)}): is it this policy's log?")
            if ev.event_id in seen:
                raise InvalidArgument("EventId", f"{ev.event_id!r} comes twice in this batch")
        except LtrrError as exc:
            errors.append((number, exc.message))
            continue
        except Exception:  # a line the reader did not foresee: that line is skipped, not the stream
            log.exception("import: line %d could not be read", number)
            errors.append((number, "line: could not be read (the server log says why)"))
            continue
        seen.add(ev.event_id)
        events.append((number, ev))
    return events, errors


def _some(ids: Sequence[str], shown: int = 4) -> str:
    """Up to ``shown`` ids, quoted.

    >>> _some(["a", "b"]), _some(["a", "b", "c", "d", "e", "f"])
    ("'a', 'b'", "'a', 'b', 'c', 'd' and 2 more")
    """
    head = ", ".join(repr(i) for i in ids[:shown])
    return head if len(ids) <= shown else f"{head} and {len(ids) - shown} more"


class Imports:
    def __init__(self, policies: PolicyBook, rewards: Rewards, writer: EventLogWriter, store: EventLogStore,
                 limits: Limits, retrieval_policies: Sequence[str] = ()) -> None:
        self._policies = policies
        self._retrieval_policies = frozenset(retrieval_policies)
        self._rewards = rewards
        self._writer = writer
        self._store = store
        self._limits = limits
        self._made: dict[bytes, tuple[list[str], str]] = {}
        # Event ids queued and not yet committed: the log cannot tell a later batch about them.
        self._queued: set[str] = set()

    def _action_rows(self, ev: ImportedEvent) -> tuple[list[str], str]:
        """The actions' VW lines and log JSON, made once per distinct action list."""
        made = self._made.get(ev.actions_key) if ev.actions_key else None
        if made is None:
            made = ([action_line(a, f) for a, f in zip(ev.action_ids, ev.action_features, strict=True)],
                    actions_to_json(zip(ev.action_ids, ev.action_features, strict=True)))
            if ev.actions_key:
                if len(self._made) >= 256:
                    self._made.clear()
                self._made[ev.actions_key] = made
        return made

    async def submit(self, policy: str, lines: list[str], first_line: int, validate_only: bool
                     ) -> Awaitable[ImportResult]:
        """Parses one batch and queues its rows; the awaitable it returns resolves once they are
        committed. Batches submitted one after another are joined in that order and may commit
        together (the next is parsed while the last commits)."""
        rt = self._policies.get(policy, "policy")
        if policy in self._retrieval_policies:
            # Until 2026-12-01 they were taken, joined, and never learned (source "norecord").
            raise FailedPrecondition(f"policy {policy!r} draws plans for Retrieve and Search and learns a plan from "
                                     f"the candidates its strategies returned, which an imported line does not carry: "
                                     f"imported, its lines would never be learned", field="policy")
        if len(lines) > self._limits.max_reward_batch:
            raise InvalidArgument("lines", f"{len(lines)} lines in one batch, more than limits.max_reward_batch="
                                           f"{self._limits.max_reward_batch}")
        first_line = first_line or 1
        events, errors = await asyncio.to_thread(parse_batch, lines, first_line, rt.spec.kind, self._limits,
                                             rt.action_ids)
        known, _ = await asyncio.to_thread(self._store.lookup_events, [(ev.event_id, "") for _, ev in events])
        joiner = self._rewards.joiner
        fresh = [(n, ev) for n, ev in events
                 if ev.event_id not in known and ev.event_id not in joiner and ev.event_id not in self._queued]
        result = ImportResult(len(fresh), len(events) - len(fresh), errors)
        if validate_only or not fresh:
            return _done(result)
        if self._writer.room() < 3 * len(fresh) or joiner.room() < len(fresh):  # decision, reward, join
            raise Overloaded("the write queue or the pending joins are full; retry the batch with backoff")
        rt = self._policies.get(policy, "policy")  # it may have changed lineage meanwhile
        now = time.time()
        decisions, rewards, ids = [], [], []
        for _, ev in fresh:
            action_lines, actions_json = self._action_rows(ev)
            first = ev.probabilities[0]
            greedy = max(range(len(first)), key=first.__getitem__)
            chosen = [(idx, ev.probabilities[s][idx]) for s, idx in enumerate(ev.chosen)]
            pd = PendingDecision(
                event_id=ev.event_id, policy=policy, lineage=rt.lineage, created_at=ev.created_at,
                deadline=ev.created_at, shared=shared_line(ev.context), actions=action_lines,
                action_ids=ev.action_ids, chosen=chosen, explored=ev.chosen[0] != greedy,
                aggregation="first", default_reward=rt.spec.default_reward, learn=ev.learn)
            if ev.reward is not None:
                pd.add_reward(IMPORT_REWARD_ID, ev.reward)
                rewards.append(RewardRow(ev.event_id, IMPORT_REWARD_ID, ev.reward, None, None, None, "accepted", now))
            joiner.add(pd)
            ids.append(ev.event_id)
            decisions.append(DecisionRecord(ev.event_id, policy, rt.lineage, ev.created_at, ev.created_at, ev.context,
                                            actions_json, ev.probabilities, ev.chosen, pd.explored, 0, ev.learn))
        # Decisions, then their rewards, then the joins: the order a live decision's rows take.
        self._writer.append("decisions", decisions)
        if rewards:
            self._writer.append("rewards", rewards)  # the barrier below waits for their commit
        joiner.close_now(ids, now)
        self._rewards.flush_joined()
        committed = self._writer.barrier()  # the joins too
        self._queued.update(ids)

        async def wait() -> ImportResult:
            try:
                await asyncio.wrap_future(committed)
            finally:
                self._queued.difference_update(ids)
            return result

        return asyncio.ensure_future(wait())

    async def import_lines(self, policy: str, lines: list[str], first_line: int, validate_only: bool
                           ) -> ImportResult:
        """Imports one batch; returns once its rows are committed."""
        return await (await self.submit(policy, lines, first_line, validate_only))


def _done(result: ImportResult) -> Awaitable[ImportResult]:
    fut: asyncio.Future[ImportResult] = asyncio.get_running_loop().create_future()
    fut.set_result(result)
    return fut
