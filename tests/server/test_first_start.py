"""A first start's work (demo catalog, indexes, demo autocomplete model): in a child process, once."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from ltrr.v1 import models_pb2, models_pb2_grpc, retrieval_pb2_grpc
from ltrr_server import first_start
from ltrr_server.catalog.catalog import Catalog
from ltrr_server.demo.music import MusicWorld
from ltrr_server.log import db
from ltrr_server.xmr.registry import ModelRegistry
from tests.conftest import TEST_ITEMS, free_port, retrieval_server_settings
from tests.helpers import child, wait_for
from tests.server.api.test_retrieval import retrieve_request

READY = "first start: catalog and models ready"


def test_the_work_runs_in_a_child_once_and_the_server_serves_what_it_made(
    make_server: Any, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = retrieval_server_settings(sqlite_url, tmp_path / "data", model_dir=str(tmp_path / "models"),
                                         demo_autocomplete_sessions=300)
    caplog.set_level(logging.INFO, logger="ltrr_server.first_start")
    s = make_server(settings)
    assert READY in caplog.text  # logged by the server once the child is done, and only then
    song = next(it for it in MusicWorld(n_items=TEST_ITEMS, seed=42).items if it["type"] == "song")
    resp = retrieval_pb2_grpc.RetrievalServiceStub(s.channel()).Retrieve(
        retrieve_request("retrieval", song["title"], fixed_plan={"lexical": 10, "vector": 10}))
    assert song["id"] in [c.item_id for c in resp.candidates]
    assert {r.strategy: r.returned for r in resp.strategies}["vector"] == 10
    got = models_pb2_grpc.ModelServiceStub(s.channel()).Autocomplete(
        models_pb2.AutocompleteRequest(model="autocomplete", prefix="ja"))
    assert got.model_version == 1 and got.completions
    s.stop()

    caplog.clear()
    again = make_server(settings)  # a restart finds everything made: no second child
    assert READY not in caplog.text and len(again.core.retriever.catalog) == TEST_ITEMS


def test_a_failed_child_is_an_error_naming_its_exit_and_the_next_start_does_the_work(
    sqlite_url: str, tmp_path: Path,
) -> None:
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(b'{"id": "a", "title": "caf\xe9"}\n')  # Latin-1, not UTF-8
    base = retrieval_server_settings(sqlite_url, tmp_path / "data", model_dir=str(tmp_path / "models"),
                                     demo_autocomplete_sessions=300)
    settings = dataclasses.replace(base, retrieval=dataclasses.replace(base.retrieval, catalog_path=str(catalog)))
    engine = db.create_engine(sqlite_url)
    db.migrate(engine)
    registry = ModelRegistry(engine, tmp_path / "models")
    assert first_start.needs_work(settings, engine, registry)
    with pytest.raises(first_start.FirstStartError, match=r"exit code 1"):
        first_start.run(settings)
    # The model was trained before the catalog failed: it stays; the catalog is still to do.
    assert [v["version"] for v in registry.versions("autocomplete")] == [1]
    assert Catalog.stored_count(engine) == 0 and first_start.needs_work(settings, engine, registry)

    catalog.write_text('{"id": "a", "title": "café"}\n', encoding="utf-8")
    first_start.run(settings)
    assert Catalog.load(engine).ids == ["a"] and not first_start.needs_work(settings, engine, registry)
    assert [v["version"] for v in registry.versions("autocomplete")] == [1]


def test_a_failed_first_start_holds_retrieval_down_and_is_tried_again_until_it_works(
    make_server: Any, sqlite_url: str, tmp_path: Path,
) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(b'{"id": "a", "title": "caf\xe9"}\n')  # Latin-1, not UTF-8
    base = retrieval_server_settings(sqlite_url, tmp_path / "data", first_start_retry_seconds=0.5)
    settings = dataclasses.replace(base, retrieval=dataclasses.replace(base.retrieval, catalog_path=str(catalog)))
    s = make_server(settings)  # ready as far as it can be: decisions serve, retrieval says why it cannot
    health = health_pb2_grpc.HealthStub(s.channel())
    retrieval = health_pb2.HealthCheckRequest(service="ltrr.v1.RetrievalService")
    assert health.Check(retrieval).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        retrieval_pb2_grpc.RetrievalServiceStub(s.channel()).Retrieve(retrieve_request("retrieval", "café"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "could not be loaded" in err.value.details()
    catalog.write_text('{"id": "a", "title": "café"}\n', encoding="utf-8")  # mended: the next try works
    wait_for(lambda: health.Check(retrieval).status == health_pb2.HealthCheckResponse.SERVING, timeout=30,
             what="retrieval SERVING after a retry")
    assert s.registry.get_sample_value("ltrr_component_restarts_total", {"component": "first_start"}) >= 1
    resp = retrieval_pb2_grpc.RetrievalServiceStub(s.channel()).Retrieve(
        retrieve_request("retrieval", "café", fixed_plan={"lexical": 10}))
    assert [c.item_id for c in resp.candidates] == ["a"]


def test_sigterm_during_a_first_start_stops_its_child_and_the_server_at_once(tmp_path: Path) -> None:
    """An orchestrator's SIGTERM (Kubernetes waits 30 s, then SIGKILLs) during the embedded demo's
    first start, whose child builds for about a minute: the server and every child it started end
    within seconds, cleanly, and the work is left for the next start."""
    db_url = f"sqlite:///{tmp_path / 'ltrr.db'}"
    log_path = tmp_path / "server.log"
    env = {**os.environ, "LTRR_MODEL_DIR": str(tmp_path / "models"),
           "LTRR_RETRIEVAL__DATA_DIR": str(tmp_path / "data")}
    env.pop("LTRR_CONFIG", None)  # the embedded demo
    with open(log_path, "w") as out:
        proc = child(subprocess.Popen(
            [sys.executable, "-m", "ltrr_client.cli", "serve", "--db", db_url, "--grpc-port", str(free_port()),
             "--metrics-port", "-1", "--host", "127.0.0.1"], stdout=out, stderr=subprocess.STDOUT, env=env))
    # The child is at work once it logs (the server itself logs only when the work is done).
    wait_for(lambda: "autocomplete demo model" in log_path.read_text(), timeout=90,
             what="the first start's child at work")
    assert proc.poll() is None
    everyone = psutil.Process(proc.pid).children(recursive=True)

    t0 = time.monotonic()
    proc.terminate()
    code = proc.wait(30)
    took = time.monotonic() - t0
    text = log_path.read_text()
    assert code == 0, text
    assert took < 10, f"stopping took {took:.1f}s\n{text}"
    assert "first start: stopped with the server" in text and READY not in text
    _, alive = psutil.wait_procs(everyone, timeout=5)
    assert not alive, f"still running after the server: {alive}"

    settings = retrieval_server_settings(db_url, tmp_path / "data", model_dir=str(tmp_path / "models"),
                                         demo_autocomplete_sessions=300)
    engine = db.create_engine(db_url)
    try:  # what the child had not finished is still to do
        assert first_start.needs_work(settings, engine, ModelRegistry(engine, tmp_path / "models"))
    finally:
        engine.dispose()
