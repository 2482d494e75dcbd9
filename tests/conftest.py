"""Shared fixtures: real databases (SQLite files, PostgreSQL databases) and real servers on free ports."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import settings as hypothesis_settings
from prometheus_client import CollectorRegistry

from ltrr_server.app import LtrrServer, build_server
from ltrr_server.config import ActionSpec, PolicySpec, RetrievalSettings, Settings, StrategySpec
from tests.helpers import stop_children

# The property tests draw the same examples on every run, so that a run fails only on a change of
# the code: a random draw failed CI once on a number VW's text parser reads as 0, in code no
# change had touched. HYPOTHESIS_PROFILE=explore draws new ones: run it when changing a conversion.
hypothesis_settings.register_profile("repeatable", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

PG_URL = os.environ.get("LTRR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
# CI sets this so that an unreachable PostgreSQL fails the run instead of skipping.
REQUIRE_PG = os.environ.get("LTRR_REQUIRE_PG") == "1"


def _pg_reachable() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return ""
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"


_PG_PROBLEM: str | None = None
# Servers started by the current test, stopped before its PostgreSQL database is dropped.
_RUNNING: list[ServerThread] = []


def pg_problem() -> str:
    global _PG_PROBLEM
    if _PG_PROBLEM is None:
        _PG_PROBLEM = _pg_reachable()
    return _PG_PROBLEM


@pytest.fixture(autouse=True)
def _stop_started_processes() -> Iterator[None]:
    """Every process a test started (``tests.helpers.child``) stops when the test ends, failed or not:
    a failed assertion before ``terminate()`` used to leave an ``ltrr serve`` running."""
    yield
    stop_children()


def _new_pg_database() -> str:
    """A fresh PostgreSQL database's name (skips, or fails under LTRR_REQUIRE_PG, without a server)."""
    problem = pg_problem()
    if problem:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required (LTRR_REQUIRE_PG=1) but not reachable at {PG_URL}: {problem}")
        pytest.skip(f"no PostgreSQL server reachable at {PG_URL} ({problem}); set LTRR_TEST_PG_URL")
    import psycopg

    name = f"ltrr_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_database_url(name: str) -> str:
    return f"{PG_URL.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = _new_pg_database()
    yield _pg_database_url(name)
    # Servers of this test stop (and write their last snapshots) before their database goes.
    while _RUNNING:
        _RUNNING.pop().stop()
    stop_children()
    _drop_pg_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ltrr.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ltrr.db'}"


def demo_policy(**changes: Any) -> PolicySpec:
    base = PolicySpec(
        name="demo", exploration="epsilon", epsilon=0.1, interactions=("uA",), join_window_seconds=30.0,
        actions=tuple(ActionSpec(a) for a in ("news", "sports", "music", "movies")),
    )
    return replace(base, **changes)


def server_settings(db_url: str, *policies: PolicySpec, **changes: Any) -> Settings:
    return Settings(**{
        "db_url": db_url, "grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0,
        "publish_interval_seconds": 0.02, "snapshot_interval_seconds": 3600.0,
        "policies": policies or (demo_policy(),), **changes,
    })


class ServerThread:
    """A real ltrr server on its own event loop thread, on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: LtrrServer
        self.server, self.port = self.call(build_server(settings, self.registry))
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    @property
    def core(self) -> Any:
        return self.server.core

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.call(self.server.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def make_server() -> Iterator[Any]:
    started: list[ServerThread] = []

    def make(settings: Settings) -> ServerThread:
        s = ServerThread(settings)
        started.append(s)
        _RUNNING.append(s)
        return s

    yield make
    for s in started:
        s.stop()
    _RUNNING.clear()


@pytest.fixture
def server(make_server: Any, db_url: str) -> ServerThread:
    return make_server(server_settings(db_url))  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def retrieval_policy(**changes: Any) -> PolicySpec:
    # mtr, as the demo's retrieval policy (demo.toml says why).
    base = PolicySpec(name="retrieval", exploration="epsilon", epsilon=0.05, interactions=("hP", "qP"),
                      join_window_seconds=30.0, cb_type="mtr")
    return replace(base, **changes)


# A small music catalog: big enough for every query kind, quick to index (about a second).
TEST_ITEMS = 2000


def retrieval_server_settings(db_url: str, data_dir: Path, n_items: int = TEST_ITEMS, **changes: Any) -> Settings:
    """A server with the demo's four strategies over a generated catalog of ``n_items``."""
    strategies = (
        StrategySpec("lexical", "lexical", (0, 10, 50)),
        StrategySpec("vector", "vector", (0, 10, 50)),
        StrategySpec("memory", "memory", (0, 10)),
        StrategySpec("explore", "explore", (0, 10)),
    )
    retrieval = RetrievalSettings(data_dir=str(data_dir), demo_items=n_items, policies=("retrieval",),
                                  strategies=strategies, cost_per_candidate=0.001)
    return server_settings(db_url, retrieval_policy(), demo_policy(), retrieval=retrieval, **changes)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def refusing_rserver(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One retrieval server per database for a module's table of refused requests. A refused
    request changes nothing (each case checks that nothing was logged), so the cases share it:
    a retrieval server builds its catalog and indexes at its first start, 2-6 s a case."""
    folder = tmp_path_factory.mktemp("refusing")
    pg_name = _new_pg_database() if request.param == "postgres" else None
    url = _pg_database_url(pg_name) if pg_name else f"sqlite:///{folder / 'ltrr.db'}"
    # Not in _RUNNING: that list is the current test's, stopped when its own database goes.
    s = ServerThread(retrieval_server_settings(url, folder / "data"))
    yield s
    s.stop()
    if pg_name:
        _drop_pg_database(pg_name)
