"""deploy/dockerfile_dry_run.py and what it reads: the Dockerfile's COPY sources, entrypoint and
health check are checked here cheaply; CI also follows the whole recipe (`.ci/run`)."""

from __future__ import annotations

import doctest
import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from ltrr_server.config import load_settings

REPO = Path(__file__).resolve().parents[2]


def _dry_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dockerfile_dry_run", REPO / "deploy/dockerfile_dry_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


dry = _dry_run()
STAGES = dry.parse((REPO / "Dockerfile").read_text())
IGNORE = dry.dockerignore_patterns(REPO)


def test_doctests() -> None:
    assert doctest.testmod(dry).failed == 0


@pytest.mark.parametrize("source", [
    src for stage in STAGES for step in stage.steps if step.keyword == "COPY" and "--from" not in step.args
    for src in step.args.split()[:-1]
])
def test_every_copy_source_is_in_the_context_and_sent(source: str) -> None:
    assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    assert not dry.ignored(source, IGNORE), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize(("path", "sent"), [
    (".venv/lib/x.py", False), ("ltrr.db-wal", False), ("ltrr-data/vector/index.usearch", False),
    ("server/ltrr_server/__pycache__/core.cpython-311.pyc", False), (".git/HEAD", False),
    ("server/ltrr_server/demo.toml", True), ("server/ltrr_server/log/migrations/env.py", True), ("uv.lock", True),
])
def test_dockerignore_keeps_local_state_out_and_the_package_in(path: str, sent: bool) -> None:
    assert dry.ignored(path, IGNORE) is not sent


def test_the_image_serves_ltrr_on_the_ports_it_exposes_and_checks() -> None:
    final = STAGES[-1]
    steps = {s.keyword: s.args for s in final.steps}
    entry = dry.command_words(steps["ENTRYPOINT"]) + dry.command_words(steps["CMD"])
    # The ltrr command is the client package's; serve is the server's, added through its entry point.
    scripts = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())["project"]["scripts"]
    plugins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["ltrr.commands"]
    assert entry[0] in scripts and entry[1:] == ["serve", "--host", "0.0.0.0"]
    assert plugins == {"server": "ltrr_server.cli"}
    # Its configuration is the production starting point, not the demo: no catalog, no policies,
    # and keys required, which is what lets it bind every interface without --insecure.
    env = dict(s.args.split("=", 1) for s in final.steps if s.keyword == "ENV")
    copies = {s.args.split()[-1]: s.args.split()[0] for s in final.steps if s.keyword == "COPY"}
    config = load_settings(REPO / copies[env["LTRR_CONFIG"]], env={})
    assert config.auth == "keys" and not config.policies and not config.retrieval.enabled
    assert config.retrieval.demo_items == 0 and config.demo_autocomplete_sessions == 0
    assert {config.grpc_port, config.metrics_port} <= {int(p) for p in steps["EXPOSE"].split()}
    assert f"localhost:{config.grpc_port}" in " ".join(dry.healthcheck_command(steps["HEALTHCHECK"]))


def test_a_copy_of_a_missing_path_fails_the_dry_run(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\nWORKDIR /app\nCOPY missing ./\n")
    run = dry.DryRun(tmp_path / "Dockerfile", tmp_path / "root")
    run.do_workdir("/app")
    with pytest.raises(FileNotFoundError, match="COPY missing"):
        run.do_copy("missing ./")



def test_an_instruction_the_dry_run_does_not_know_is_refused_by_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\nWORKDIR /app\nONBUILD RUN x\n")
    run = dry.DryRun(tmp_path / "Dockerfile", tmp_path / "root")
    workdir, onbuild = run.stages[0].steps
    run.run_step(workdir)
    assert (tmp_path / "root/app").is_dir()
    with pytest.raises(NotImplementedError, match="line 3: the dry run does not know ONBUILD"):
        run.run_step(onbuild)
