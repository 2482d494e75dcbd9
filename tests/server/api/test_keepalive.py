"""Keepalive: clients that ping often keep their streams, and a client gone silent is let go."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from ltrr.v1 import decisions_pb2, decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from tests.conftest import ServerThread, server_settings


def _batches(q: queue.Queue[feedback_pb2.RewardBatch | None]) -> Iterator[feedback_pb2.RewardBatch]:
    while (batch := q.get()) is not None:
        yield batch


class _RewardStream:
    """One StreamRewards call fed from a queue, its acks read on a thread of their own."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._decide = decisions_pb2_grpc.DecisionServiceStub(channel).Decide
        self._out: queue.Queue[feedback_pb2.RewardBatch | None] = queue.Queue()
        self.acks: queue.Queue[Any] = queue.Queue()
        call = feedback_pb2_grpc.FeedbackServiceStub(channel).StreamRewards(_batches(self._out))
        threading.Thread(target=self._read, args=(call,), daemon=True).start()

    def _read(self, call: Iterator[feedback_pb2.RewardAckBatch]) -> None:
        try:
            for ack in call:
                self.acks.put(ack)
        except grpc.RpcError as exc:
            self.acks.put(exc)

    def reward_one(self) -> Any:
        """Decides, rewards that decision on the stream, and returns what comes back."""
        event_id = self._decide(decisions_pb2.DecideRequest(policy="demo"), timeout=10).event_id
        self._out.put(feedback_pb2.RewardBatch(events=[feedback_pb2.RewardEvent(event_id=event_id, value=1.0)]))
        return self.acks.get(timeout=10)

    def close(self) -> None:
        self._out.put(None)


def test_a_client_pinging_often_keeps_its_idle_reward_stream(make_server: Any, sqlite_url: str) -> None:
    # Found from outside: with grpc's own floor (5 minutes), a client pinging more often (ltrr's
    # TypeScript client every 30 s) lost its idle reward stream to GOAWAY too_many_pings after its
    # third ping. Here scaled down: pings every 1.2 s against a floor of 1 s, idle for 6 s.
    server: ServerThread = make_server(server_settings(sqlite_url, client_ping_min_seconds=1.0))
    channel = grpc.insecure_channel(server.target, options=[
        ("grpc.keepalive_time_ms", 1200), ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
    stream = _RewardStream(channel)
    try:
        first = stream.reward_one()
        assert isinstance(first, feedback_pb2.RewardAckBatch), first
        time.sleep(6)  # 5 pings, no data
        second = stream.reward_one()
        assert isinstance(second, feedback_pb2.RewardAckBatch), second
        assert second.acks[0].status == feedback_pb2.REWARD_STATUS_ACCEPTED
    finally:
        stream.close()
        channel.close()


class _FreezingProxy:
    """A TCP proxy to the server that can go silent (forwarding nothing either way, closing
    nothing), as a client behind a partition or on a machine that died does; it notes when the
    server closes its side."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.frozen = threading.Event()
        self.server_closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(self._upstream)
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if from_server:
                    self.server_closed.set()
                return
            if not self.frozen.is_set():
                dst.sendall(data)


def test_a_client_gone_silent_is_let_go_by_keepalive(make_server: Any, sqlite_url: str) -> None:
    # Without the server's own pings, a connection whose client vanished without a word stays
    # open (with its streams) until TCP gives up, hours later.
    server: ServerThread = make_server(server_settings(sqlite_url, keepalive_seconds=1.0))
    proxy = _FreezingProxy(server.target)
    channel = grpc.insecure_channel(proxy.target)
    stream = _RewardStream(channel)
    try:
        assert isinstance(stream.reward_one(), feedback_pb2.RewardAckBatch)
        proxy.frozen.set()
        started = time.monotonic()
        assert proxy.server_closed.wait(15), "the server kept the silent connection open"
        assert time.monotonic() - started < 10
    finally:
        stream.close()
        channel.close()


@pytest.mark.parametrize("name", ["keepalive_seconds", "client_ping_min_seconds"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_keepalive_settings_must_be_positive(name: str, bad: float, sqlite_url: str) -> None:
    from ltrr_server.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=rf"server\.{name}"):
        server_settings(sqlite_url, **{name: bad})


def test_ltrrs_python_client_finds_a_dead_connection_under_an_idle_stream(make_server: Any, sqlite_url: str) -> None:
    # Found from outside: grpc stops a client's keepalive pings after 2 without data, so an idle
    # reward stream of ltrr's Python client whose server then vanished (a partition, a machine
    # gone) waited for its acks until TCP gave up, hours later. Here scaled down: pings every
    # second, idle for 4 s (3 pings and more), then the connection goes silent.
    from ltrr_client.client import LtrrClient

    server: ServerThread = make_server(server_settings(sqlite_url, client_ping_min_seconds=0.5))
    proxy = _FreezingProxy(server.target)
    client = LtrrClient(proxy.target, keepalive_ms=1000, ping_floor_ms=500)
    stream = _RewardStream(client.channel)
    try:
        assert isinstance(stream.reward_one(), feedback_pb2.RewardAckBatch)
        time.sleep(4)
        proxy.frozen.set()
        started = time.monotonic()
        ended = stream.acks.get(timeout=20)
        assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.UNAVAILABLE, ended
        assert time.monotonic() - started < 5
    finally:
        stream.close()
        client.close()


def test_ltrrs_python_client_refuses_to_ping_faster_than_the_server_allows() -> None:
    # Found from outside: pinging on quiet streams too, a client told keepalive_ms=2000 had its
    # idle reward stream ended by a server on its defaults after a few seconds (GOAWAY
    # too_many_pings); before, grpc's limit of 2 pings without data had hidden it.
    from ltrr_client.client import LtrrClient

    with pytest.raises(ValueError, match=r"^keepalive_ms: 2000, more often than the server lets a client ping"):
        LtrrClient("127.0.0.1:1", keepalive_ms=2000)
    LtrrClient("127.0.0.1:1", keepalive_ms=0).close()
    LtrrClient("127.0.0.1:1", keepalive_ms=10_000).close()
