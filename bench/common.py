"""What the benchmarks share: servers in child processes, free ports, a closed-loop load driver."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(target: str, proc: subprocess.Popen[bytes], timeout: float = 300,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise TimeoutError(target)


class LtrrProcess:
    """`ltrr serve` as an operator runs it, on a temporary SQLite file unless a URL is given.

    It runs in its own directory (a new temporary one unless given), where relative paths of the
    config (the demo's ``ltrr-data``) land: a fresh database never meets another run's indexes.
    """

    def __init__(self, config: str | None = None, db_url: str | None = None, metrics: bool = True,
                 directory: Path | None = None, credentials: grpc.ChannelCredentials | None = None) -> None:
        # A directory made here is removed by ``stop``: a demo server leaves ~150 MB of indexes in it.
        self._owns_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="ltrr-bench-"))
        self.port = free_port()
        self.metrics_port = free_port() if metrics else -1
        self.db_url = db_url or f"sqlite:///{self.dir / 'ltrr.db'}"
        args = [sys.executable, "-m", "ltrr_client.cli", "serve", "--db", self.db_url, "--grpc-port",
                str(self.port), "--metrics-port", str(self.metrics_port), "--host", "127.0.0.1"]
        if config:
            (self.dir / "ltrr.toml").write_text(config)
            args += ["--config", str(self.dir / "ltrr.toml")]
        self.log = open(self.dir / "server.log", "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.target = f"127.0.0.1:{self.port}"
        try:
            wait_healthy(self.target, self.proc, credentials=credentials)
        except BaseException:
            self.stop()
            raise

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def closed_loop(call: Callable[[], Awaitable[Any]], seconds: float, concurrency: int) -> float:
    """Calls per second with ``concurrency`` calls always in flight, after a short warm-up."""
    stop_at = 0.0
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await call()
            count += 1

    stop_at = time.perf_counter() + min(1.0, seconds / 5)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    count = 0
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


def save(name: str, result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"name": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(), **result}
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
