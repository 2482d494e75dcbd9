"""The core's parts on their own, over a real SQLite database and a real writer and learner front
(its process not started: what it would learn stays in view), without gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ltrr_server.config import ActionSpec, Limits, PolicySpec
from ltrr_server.core.ltrr import Ltrr
from ltrr_server.core.policies import PolicyBook, PolicyChange
from ltrr_server.core.rewards import RewardInput
from ltrr_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Overloaded
from ltrr_server.log import db
from ltrr_server.log.joiner import Outcome
from ltrr_server.metrics import Metrics
from tests.conftest import demo_policy, server_settings
from tests.helpers import rows


@pytest.fixture
def core(sqlite_url: str) -> Iterator[Ltrr]:
    """The parts with their policies restored; the writer commits from a thread; no learner process."""
    settings = server_settings(sqlite_url, demo_policy(join_window_seconds=0.2), writer_process=False,
                               limits=Limits(max_pending_joins=20))
    c = Ltrr(settings, Metrics(CollectorRegistry()))
    db.migrate(c.engine)
    c.writer.start()
    c.rewards.joiner.next_seq = c.store.max_joined_seq() + 1
    for rt, since in c.policies.restore_all(settings.policies):
        c.rewards.recover(rt, since)
    yield c
    c.writer.close()
    c.engine.dispose()


def _commit(core: Ltrr) -> None:
    core.writer.barrier().result(timeout=10)


def test_policy_book_names_the_field_of_what_is_missing(core: Ltrr) -> None:
    with pytest.raises(InvalidArgument, match="^policy: is empty"):
        core.policies.get("")
    with pytest.raises(InvalidArgument, match="^name: longer than 64 characters"):
        core.policies.get("x" * 65, "name")
    with pytest.raises(NotFound) as err:
        core.policies.get("nope")
    assert err.value.field == "policy"


def test_policy_book_creates_and_resets_lineages(core: Ltrr) -> None:
    spec = PolicySpec(name="p2", actions=(ActionSpec("a"), ActionSpec("b")))
    info = asyncio.run(core.policies.create(spec))
    assert (info.lineage, info.revision) == (1, 1)
    with pytest.raises(AlreadyExists):
        asyncio.run(core.policies.create(spec))
    # A description is not a learning parameter: same lineage. A learning rate is: a new one.
    same = asyncio.run(core.policies.update("p2", lambda live: replace(live, description="x")))
    assert (same.info.lineage, same.reset, same.before) == (1, False, spec)
    new = asyncio.run(core.policies.update("p2", lambda live: replace(live, learning_rate=0.2)))
    assert (new.info.lineage, new.info.revision, new.reset, new.before.description) == (2, 3, True, "x")
    assert [(r["name"], r["lineage"]) for r in rows(core.settings.db_url, "policies", "name = 'p2'")] == [("p2", 2)]


def test_a_publish_of_an_old_lineage_or_an_older_version_changes_nothing(core: Ltrr) -> None:
    rt = core.policies.get("demo")
    model = rt.serving
    core.policies.on_publish("demo", rt.lineage, model, 7, 0.1)
    core.policies.on_publish("demo", rt.lineage + 1, model, 9, 0.1)  # another lineage's model
    core.policies.on_publish("demo", rt.lineage, model, 5, 0.1)  # older than what is served
    assert core.policies.get("demo").model_version == 7


def test_decisions_are_logged_and_wait_for_their_rewards(core: Ltrr) -> None:
    d = core.decisions.decide("demo", [("user", [("segment", "s1")])])
    assert d.event_id in core.rewards.joiner
    _commit(core)
    [row] = rows(core.settings.db_url, "decisions")
    assert (row["event_id"], row["policy"], row["chosen"]) == (d.event_id, "demo", f"[{d.slots[0].chosen}]")
    with pytest.raises(InvalidArgument, match="event_id: event id .* is already used"):
        core.decisions.decide("demo", [], event_id=d.event_id)
    with pytest.raises(InvalidArgument, match="^slots: must be at most 64"):
        core.decisions.decide("demo", [], slots=65)


def test_decisions_push_back_when_too_many_wait_for_rewards(core: Ltrr) -> None:
    for _ in range(20):
        core.decisions.decide("demo", [])
    with pytest.raises(Overloaded, match="limits.max_pending_joins=20"):
        core.decisions.decide("demo", [])


def test_rewards_are_classified_committed_and_joined(core: Ltrr) -> None:
    d = core.decisions.decide("demo", [])

    async def report() -> list[str]:
        results = await core.rewards.report([
            RewardInput(d.event_id, "r1", 1.0), RewardInput(d.event_id, "r1", 1.0),
            RewardInput("no-such-event", "", 1.0), RewardInput(d.event_id, "r2", float("nan")),
        ])
        return [r.outcome for r in results]

    assert asyncio.run(report()) == [Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.UNKNOWN, Outcome.INVALID]
    # Committed before the answer; joined at the first reward (aggregation "first"), handed to the learner.
    assert [r["event_id"] for r in rows(core.settings.db_url, "rewards")] == [d.event_id]
    assert [ev.event_id for ev in core.learner._pre_start] == [d.event_id]
    assert core.rewards.stats() == {"rewards_unknown": 1, "rewards_invalid": 1, "pending_joins": 0}
    _commit(core)
    assert [(r["event_id"], r["reward"]) for r in rows(core.settings.db_url, "joined")] == [(d.event_id, 1.0)]


def test_a_reward_after_the_window_is_late_and_the_default_reward_is_learned(core: Ltrr) -> None:
    import time

    d = core.decisions.decide("demo", [])
    time.sleep(0.3)  # the 0.2 s window closes
    core.rewards.expire(time.time())
    [joined] = core.learner._pre_start
    assert (joined.event_id, joined.source, joined.reward) == (d.event_id, "default", 0.0)
    [result] = asyncio.run(core.rewards.report([RewardInput(d.event_id, "", 1.0)]))
    assert result.outcome == Outcome.LATE


def test_unjoined_decisions_are_recovered_by_a_new_core(core: Ltrr, sqlite_url: str) -> None:
    d = core.decisions.decide("demo", [])
    asyncio.run(core.rewards.report([RewardInput(d.event_id, "x", 2.0)]))
    core.writer.close()
    # The join was made in memory; delete it from the log as if the stop came before its commit.
    with core.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM joined")
    again = Ltrr(core.settings, Metrics(CollectorRegistry()))
    again.writer.start()
    again.rewards.joiner.next_seq = 1
    [(rt, since)] = again.policies.restore_all(core.settings.policies)
    assert again.rewards.recover(rt, since) == 1
    [ev] = again.learner._pre_start
    assert (ev.event_id, ev.reward) == (d.event_id, 2.0)
    again.writer.close()
    core.writer = again.writer  # the fixture closes this one


def test_a_retrieval_policy_stored_as_an_apprentice_is_restored_online(
        core: Ltrr, caplog: pytest.LogCaptureFixture) -> None:
    # Switched so before UpdatePolicy refused it, it stayed so in its database (it served as online).
    asyncio.run(core.policies.update("demo", lambda live: replace(live, mode="apprentice")))
    book = PolicyBook(core.store, Metrics(CollectorRegistry()), core.learner, lambda: 1, 100,
                      retrieval_policies=("demo",))
    changes: list[PolicyChange] = []
    [(rt, _)] = book.restore_all(core.settings.policies, on_change=changes.append)
    assert (rt.spec.mode, rt.revision, rt.lineage) == ("online", 3, 1)
    assert [(c.before.mode, c.info.spec.mode, c.reset) for c in changes] == [
        ("apprentice", "online", False)]
    assert "policy demo: stored as an apprentice, but it draws plans for Retrieve and Search" in caplog.text
    [row] = rows(core.settings.db_url, "policies", "name = 'demo'")
    assert '"mode": "online"' in row["spec"] and row["revision"] == 3


def test_a_default_changed_by_a_new_version_does_not_change_a_configured_policy(core: Ltrr) -> None:
    # The file sets these fields of demo; the rest are defaults, which a later ltrr may change
    # (cb_type, power_t and the exploration each changed once): that is no edit of the file, and
    # taking it would start a new lineage, throwing the learned model away, at an upgrade.
    fields = ("name", "exploration", "epsilon", "interactions", "join_window_seconds", "actions")
    spec = core.settings.policies[0]

    def restart(configured: PolicySpec, sets: tuple[str, ...]) -> tuple[PolicyBook, list[PolicyChange]]:
        book = PolicyBook(core.store, Metrics(CollectorRegistry()), core.learner, lambda: 1, 100)
        changes: list[PolicyChange] = []
        book.restore_all([configured], {"demo": sets}, on_change=changes.append)
        return book, changes

    restart(spec, fields)  # notes what the file sets
    book, changes = restart(replace(spec, power_t=0.3), fields)  # "a new default"
    assert (book.get("demo").spec.power_t, book.get("demo").lineage, changes) == (spec.power_t, 1, [])
    # Set in the file, it is a change.
    book, _ = restart(replace(spec, power_t=0.3), (*fields, "power_t"))
    assert (book.get("demo").spec.power_t, book.get("demo").lineage) == (0.3, 2)
    # Taken out of the file again: the default it has now.
    book, _ = restart(spec, fields)
    assert (book.get("demo").spec.power_t, book.get("demo").lineage) == (spec.power_t, 3)


def test_a_config_file_change_that_does_not_go_with_the_stored_spec_is_named(core: Ltrr) -> None:
    # An admin made it multi-slot; the file then asks for an apprentice (cb policies only).
    asyncio.run(core.policies.update("demo", lambda live: replace(live, kind="ccb", slots=2)))
    book = PolicyBook(core.store, Metrics(CollectorRegistry()), core.learner, lambda: 1, 100)
    with pytest.raises(InvalidArgument, match=r"^policies\.demo: the config file's changes since it was last "
                                              r"read \(mode\) do not go with the database's spec: "):
        book.restore_all([replace(core.settings.policies[0], mode="apprentice")])


def test_a_start_that_fails_at_one_policy_has_reported_the_changes_before_it(core: Ltrr) -> None:
    # Its changes are stored one by one: the audit trail hears of each at once, not at the end.
    zz = PolicySpec(name="zz", actions=(ActionSpec("a"), ActionSpec("b"), ActionSpec("c")))
    asyncio.run(core.policies.create(zz))
    demo = core.settings.policies[0]

    def book() -> PolicyBook:
        return PolicyBook(core.store, Metrics(CollectorRegistry()), core.learner, lambda: 1, 100)

    book().restore_all([demo, zz])  # the file declares both now
    asyncio.run(core.policies.update("zz", lambda live: replace(live, kind="ccb", slots=2)))
    heard: list[str] = []
    with pytest.raises(InvalidArgument, match=r"^policies\.zz: "):
        book().restore_all([replace(demo, learning_rate=0.2), replace(zz, mode="apprentice")],
                           on_change=lambda change: heard.append(f"{change.info.spec.name} {change.reset}"))
    assert heard == ["demo True"]


def test_models_check_the_request_before_looking_the_model_up(core: Ltrr) -> None:
    async def predict(**kw: object) -> object:
        return await core.models.xmr_predict(**kw)  # type: ignore[arg-type]

    with pytest.raises(InvalidArgument, match="^queries: is empty"):
        asyncio.run(predict(model="m", queries=[]))
    with pytest.raises(InvalidArgument, match=r"^queries\[0\]: 513 characters"):
        asyncio.run(predict(model="m", queries=["x" * 513]))
    with pytest.raises(InvalidArgument, match="^k: must be in"):
        asyncio.run(predict(model="m", queries=["jazz"], k=1001))
    with pytest.raises(NotFound, match="model 'm' not found"):
        asyncio.run(predict(model="m", queries=["jazz"]))


def test_sessions_are_bounded_whatever_is_recorded(core: Ltrr) -> None:
    sessions = core.sessions
    for i in range(300):
        sessions.record(f"s{i}", "jazz " * 100)
    assert len(sessions) <= core.limits.max_sessions
    assert all(len(q) <= 128 for q in sessions.history("s299"))
    with pytest.raises(InvalidArgument, match="^query: 513 characters"):
        sessions.record("s", "x" * 513)
    with pytest.raises(InvalidArgument, match="^previous_queries: 33 queries"):
        sessions.from_request(["a"] * 33, "")


def test_the_data_folder_is_claimed_by_one_database(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    db.claim_folder(folder, "aaa", "retrieval.data_dir")
    db.claim_folder(folder, "aaa", "retrieval.data_dir")  # its own: fine, again and again
    with pytest.raises(FailedPrecondition, match=r"data_dir = .* belongs to another database \(aaa; this one is bbb\)"):
        db.claim_folder(folder, "bbb", "retrieval.data_dir")
