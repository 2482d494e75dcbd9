"""Small helpers the tests share: reading the event log, waiting for a condition."""

from __future__ import annotations

import functools
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ltrr_server.config import PolicySpec
from ltrr_server.log.db import create_engine


def rows(db_url: str, table: str, where: str = "", **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "")
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
    finally:
        engine.dispose()


_CHILDREN: list[subprocess.Popen[bytes]] = []


def child(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Registers a process a test started, so that it is stopped when the test ends, failed or not."""
    _CHILDREN.append(proc)
    return proc


def stop_children() -> None:
    """Stops every registered process still running: SIGTERM (its own children stop with it), then
    SIGKILL after 20 s."""
    while _CHILDREN:
        proc = _CHILDREN.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class TcpProxy:
    """A TCP proxy on a free local port to ``target``, which a test can cut and restore: ``down()``
    closes the listener and every connection through it (the database is away), ``up()`` listens again;
    ``freeze()`` stops passing bytes on, closing nothing (a peer that hangs), ``thaw()`` passes them again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket

        self._target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._lock = threading.Lock()
        self._sockets: list[Any] = []
        self._listener: Any = None
        self._flowing = threading.Event()
        self._flowing.set()
        self.up()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def up(self) -> None:
        import socket

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        import socket

        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes its accept(): a close alone leaves it listening
            except OSError:
                pass
            listener.close()
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, as a crash
                # Wakes the thread blocked reading it: closed alone, its number could be reused by a
                # new connection, which that thread would then read from.
                s.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            s.close()

    def _accept(self, listener: Any) -> None:
        import socket

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def poisoned_coin_model(spec: PolicySpec, shared: str, actions: Sequence[str]) -> bytes:
    """A real model of ``spec`` (coin betting) with NaN weights: VW itself, not ltrr's model,
    learned ``shared`` with a number ``x`` of 3e-10 in its last namespace, as every coin-betting
    model did before ``features.COIN_MIN_ABS_VALUE``. Its weights for ``x`` are NaN: it answers
    NaN probabilities wherever ``x`` is not 0, and finite ones elsewhere."""
    import vowpal_wabbit_next as vw

    ws = vw.Workspace(spec.vw_args())
    parse = vw.TextFormatParser(ws).parse_line
    for i in range(20):
        lines = [f"{shared} x:3e-10", *actions]
        lines[1 + i % len(actions)] = f"0:{-float(i % 3 == 0)}:0.25 {lines[1 + i % len(actions)]}"
        ws.learn_one([parse(line) for line in lines])
    return bytes(ws.serialize())


def taught_from_log(db_url: str, spec: PolicySpec) -> tuple[bytes, int]:
    """A fresh model of ``spec`` taught every joined event of its policy in the log, once, in log
    order, as the test itself reads them: (its bytes, how many events). A learner's snapshot that
    equals it learned each event exactly once."""
    from ltrr_server.learner.restore import event_from_rows
    from ltrr_server.log.store import EventLogStore
    from ltrr_server.policy.model import PolicyModel

    fresh = PolicyModel.create(spec)
    engine = create_engine(db_url)
    try:
        events = [event_from_rows(row, spec.name) for row in EventLogStore(engine).joined_after(spec.name, 0)]
    finally:
        engine.dispose()
    for ev in events:
        fresh.learn_one(ev.shared, ev.actions, [(i, -ev.reward, p) for i, p in ev.chosen])
    return fresh.to_bytes(), len(events)


DSJSON_FIXTURE = Path(__file__).parent / "fixtures" / "dsjson" / "dsjson_cb.json"


@functools.cache
def _dsjson_fixture() -> tuple[str, ...]:
    return tuple(DSJSON_FIXTURE.read_text().splitlines())


def dsjson_line(i: int, event_id: str, numbers: int = 0) -> str:
    """Line ``i`` (cycling) of VW's DSJSON fixture under a new event id; with ``numbers``, its
    context carries that many more numeric features (900 make a line of about 11 KB)."""
    import json

    fixture = _dsjson_fixture()
    d = json.loads(fixture[i % len(fixture)])
    d["EventId"] = event_id
    d["c"]["FromUrl"][0].update({f"k{j}": 0.25 for j in range(numbers)})
    return json.dumps(d)
