"""Start-up as a user meets it: `ltrr serve` on the embedded demo in a new directory (a first start:
catalog, indexes and autocomplete model built), then again in the same directory (a restart).

    python -m bench.bench_start [--no-restart]

For each start: seconds from the process start to the first health answer (NOT_SERVING while the
work runs), to each service's SERVING, and the server's RSS once SERVING. Then the learner process
is killed (SIGKILL) and the time until the supervisor has it back is measured (``ltrr_component_up``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import free_port, rss_mb, save

SERVICES = ("", "ltrr.v1.DecisionService", "ltrr.v1.FeedbackService", "ltrr.v1.AdminService",
            "ltrr.v1.RetrievalService", "ltrr.v1.ModelService")


def one_start(directory: Path, kill_learner: bool) -> dict[str, Any]:
    port, metrics_port = free_port(), free_port()
    t0 = time.monotonic()
    log = open(directory / "server.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "ltrr_client.cli", "serve", "--grpc-port", str(port),
                             "--metrics-port", str(metrics_port), "--host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    out: dict[str, Any] = {}
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        serving: dict[str, float] = {}
        while len(serving) < len(SERVICES) and time.monotonic() - t0 < 900:
            for service in SERVICES:
                if service in serving:
                    continue
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5).status
                except grpc.RpcError:
                    break
                out.setdefault("first_health_answer_s", round(time.monotonic() - t0, 2))
                if status == health_pb2.HealthCheckResponse.SERVING:
                    serving[service] = round(time.monotonic() - t0, 2)
            time.sleep(0.05)
        out["serving_s"] = {s or "overall": t for s, t in serving.items()}
        out["rss_mb"] = round(rss_mb(proc.pid), 1)
        print(f"first health answer {out.get('first_health_answer_s')} s; SERVING: {out['serving_s']}; "
              f"RSS {out['rss_mb']} MB", flush=True)
        if kill_learner:
            out["learner_back_s"] = _kill_learner(proc.pid, metrics_port)
            print(f"learner killed: back in {out['learner_back_s']} s", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        t_stop = time.monotonic()
        proc.wait(60)
        out["stop_s"] = round(time.monotonic() - t_stop, 2)
        log.close()
    return out


def _learner_pid(server_pid: int, timeout: float = 10.0) -> int:
    """The server's one live spawned child (once the first start's child is gone, the learner)."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        children = psutil.Process(server_pid).children()
        spawned = [c.pid for c in children if c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(
            c.cmdline())]
        if len(spawned) == 1:
            return spawned[0]
        if time.monotonic() > deadline:
            found = [(c.pid, c.status(), c.cmdline()) for c in children]
            raise RuntimeError(f"expected one learner process among the server's children, found {found}")
        time.sleep(0.1)


def _model_version(metrics_port: int, policy: str = "demo") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
        text = r.read().decode()
    m = re.search(rf'^ltrr_model_version\{{policy="{policy}"\}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else -1.0


def _kill_learner(server_pid: int, metrics_port: int) -> float:
    """Seconds from a SIGKILL of the learner process until its replacement has rebuilt the policies
    from the log and published them (the served model version goes up)."""
    pid = _learner_pid(server_pid)
    before = _model_version(metrics_port)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while time.monotonic() - t0 < 60:
        if _model_version(metrics_port) > before:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.02)
    raise TimeoutError("the learner did not come back in 60 s")


def run(restart: bool) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="ltrr-bench-start-"))
    try:
        out = {"first_start": one_start(directory, kill_learner=True)}
        if restart:
            out["restart"] = one_start(directory, kill_learner=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-restart", action="store_true", help="the first start only")
    save("start", run(not p.parse_args().no_restart))


if __name__ == "__main__":
    main()
