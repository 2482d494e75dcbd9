"""Consistency at start: the database against its data and model folders, the catalog against its
indexes, registered models against their files; and the port, bound before any of that work."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from ltrr.v1 import decisions_pb2_grpc, models_pb2, models_pb2_grpc, retrieval_pb2_grpc
from ltrr_client.client import decide_request, retrieve_request
from ltrr_server.app import build_server
from ltrr_server.log import db
from ltrr_server.xmr.registry import ModelRegistry
from tests.conftest import TEST_ITEMS, ServerThread, retrieval_server_settings
from tests.helpers import rows

RETRIEVAL = "ltrr.v1.RetrievalService"
MODELS = "ltrr.v1.ModelService"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _health(server: ServerThread, service: str = "") -> int:
    with server.channel() as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service)).status)


def _lexical_and_vector(server: ServerThread) -> dict[str, int]:
    with server.channel() as ch:
        resp = retrieval_pb2_grpc.RetrievalServiceStub(ch).Retrieve(
            retrieve_request("retrieval", "mellow jazz", fixed_plan={"lexical": 10, "vector": 10}))
    return {r.strategy: r.returned for r in resp.strategies}


def test_a_lost_data_folder_is_rebuilt_from_the_catalog_at_start(
    make_server: Any, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = retrieval_server_settings(sqlite_url, tmp_path / "data")
    first = make_server(settings)
    assert _lexical_and_vector(first) == {"lexical": 10, "vector": 10}
    first.stop()
    # What `docker compose up` does to a container without a volume for its data folder.
    shutil.rmtree(tmp_path / "data")
    caplog.set_level(logging.INFO)
    again = make_server(settings)
    assert "indexes behind the catalog of 2000 items (lexical holds 0, vector holds 0)" in caplog.text
    assert _lexical_and_vector(again) == {"lexical": 10, "vector": 10}
    assert _health(again) == SERVING
    assert {s.name: s.indexed() for s in again.core.retriever.strategies.values() if hasattr(s, "indexed")} == \
        {"lexical": TEST_ITEMS, "vector": TEST_ITEMS}


def test_a_data_folder_of_another_database_is_refused_by_name(
    make_server: Any, tmp_path: Path
) -> None:
    data = tmp_path / "shared-data"
    one = make_server(retrieval_server_settings(f"sqlite:///{tmp_path / 'one.db'}", data))
    assert _lexical_and_vector(one) == {"lexical": 10, "vector": 10}
    two = make_server(retrieval_server_settings(f"sqlite:///{tmp_path / 'two.db'}", data))
    # The second database finds the folder written by the first: it neither uses nor rewrites it.
    assert _health(two, RETRIEVAL) == NOT_SERVING and _health(two) == NOT_SERVING
    with two.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            retrieval_pb2_grpc.RetrievalServiceStub(ch).Retrieve(retrieve_request("retrieval", "jazz"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retrieval.data_dir" in err.value.details() and str(data) in err.value.details()
        assert "another database" in err.value.details()
        decisions_pb2_grpc.DecisionServiceStub(ch).Decide(decide_request("demo"))  # decisions go on
    assert rows(f"sqlite:///{tmp_path / 'two.db'}", "catalog_items") == []  # nothing ingested for it
    assert _lexical_and_vector(one) == {"lexical": 10, "vector": 10}  # the first one's folder untouched


def test_a_live_model_whose_files_are_missing_is_named_and_holds_the_model_service_down(
    make_server: Any, sqlite_url: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    settings = retrieval_server_settings(sqlite_url, tmp_path / "data", model_dir=str(models),
                                         demo_autocomplete_sessions=200)
    first = make_server(settings)
    [row] = first.core.registry.versions("autocomplete")
    first.stop()
    shutil.rmtree(row["path"])
    again = make_server(settings)
    assert _health(again, MODELS) == NOT_SERVING
    with again.channel() as ch, pytest.raises(grpc.RpcError) as err:
        models_pb2_grpc.ModelServiceStub(ch).Autocomplete(models_pb2.AutocompleteRequest(model="autocomplete",
                                                                                        prefix="ja"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert row["path"] in err.value.details() and "is missing" in err.value.details()
    assert "no live version" not in err.value.details()


def test_two_databases_sharing_a_model_folder_never_write_the_same_folder(tmp_path: Path) -> None:
    paths = []
    for name in ("one", "two"):
        engine = db.create_engine(f"sqlite:///{tmp_path / name}.db")
        db.migrate(engine)
        registry = ModelRegistry(engine, tmp_path / "models")
        folder = tmp_path / f"trained-{name}"
        registry.register("m", "xmr", _tiny_model(folder), {})
        paths.append(registry.get("m", 1)["path"])
        assert db.database_id(engine) == db.database_id(engine)  # made once, then kept
    assert paths[0] != paths[1]
    assert all(Path(p).is_dir() for p in paths)


def _tiny_model(folder: Path) -> Any:
    from ltrr_server.xmr.model import XmrModel

    queries = [f"{w} {v}" for w in ("jazz", "rock", "soft", "loud") for v in ("piano", "guitar", "song")]
    return XmrModel.train(queries, [q.split()[0] for q in queries])


def test_the_port_is_bound_first_and_a_port_in_use_ends_the_start_before_any_work(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    settings = retrieval_server_settings(f"sqlite:///{tmp_path / 'ltrr.db'}", tmp_path / "data")
    settings = dataclasses.replace(settings, grpc_port=port)
    started = time.monotonic()
    with pytest.raises(OSError, match=f"127.0.0.1:{port}.*in use"):
        asyncio.run(build_server(settings, CollectorRegistry()))
    assert time.monotonic() - started < 2
    assert not (tmp_path / "data").exists() and not (tmp_path / "ltrr.db").exists()
    taken.close()


def test_health_answers_not_serving_while_start_up_runs_then_serving(tmp_path: Path) -> None:
    settings = retrieval_server_settings(f"sqlite:///{tmp_path / 'ltrr.db'}", tmp_path / "data", n_items=3000)

    async def main() -> list[tuple[str, int]]:
        server, port = await build_server(settings, CollectorRegistry(), wait=False)
        seen: list[tuple[str, int]] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            first = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            seen.append(("", first.status))
            try:  # while the policies load, calls are told so; once loaded, they are answered
                await decisions_pb2_grpc.DecisionServiceStub(ch).Decide(decide_request("demo"), timeout=2)
                seen.append(("Decide", SERVING))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                assert "ltrr.v1.DecisionService is not serving yet" in (err.details() or "")
                seen.append(("Decide", NOT_SERVING))
            await server.ready()
            for service in ("", "ltrr.v1.DecisionService", RETRIEVAL, MODELS):
                seen.append((service, (await health.Check(health_pb2.HealthCheckRequest(service=service))).status))
        await server.stop(grace=0)
        return seen

    seen = asyncio.run(main())
    assert seen[0] == ("", NOT_SERVING)
    assert seen[2:] == [("", SERVING), ("ltrr.v1.DecisionService", SERVING), (RETRIEVAL, SERVING), (MODELS, SERVING)]


def test_long_start_up_work_says_it_is_still_running(caplog: pytest.LogCaptureFixture) -> None:
    from ltrr_server.app import _progress

    caplog.set_level(logging.INFO, logger="ltrr_server.app")
    with _progress("building the catalog", interval=0.05):
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "start-up: building the catalog"
    assert sum(line.startswith("start-up: still building the catalog (") for line in lines) >= 3
    assert lines[-1].startswith("start-up: done building the catalog in ")
