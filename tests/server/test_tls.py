"""TLS and mutual TLS on the gRPC port, with real certificates: the right CA connects, a wrong CA,
a plaintext client or a missing client certificate do not, a renewed certificate is served without
a restart, and the metrics endpoint serves HTTPS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from ltrr_client.client import ChannelTls, LtrrClient
from ltrr_server.errors import InvalidArgument
from tests.conftest import ServerThread, server_settings
from tests.tls_certs import Authority


def works(target: str, tls: ChannelTls | None) -> bool:
    try:
        with LtrrClient(target, timeout=5, tls=tls) as c:
            c.decide("demo", {"user": {"segment": "s1"}})
        return True
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        return False


def test_tls_serves_clients_that_trust_its_ca_only(make_server: Any, sqlite_url: str, tmp_path: Path) -> None:
    ca, other = Authority(tmp_path, "ca"), Authority(tmp_path, "other")
    pair = ca.issue("server", "ltrr", server=True)
    server = make_server(server_settings(sqlite_url, tls_cert=str(pair.cert), tls_key=str(pair.key),
                                         metrics_tls=True))
    assert works(server.target, ChannelTls(ca=str(ca.pem)))
    assert not works(server.target, ChannelTls(ca=str(other.pem)))
    assert not works(server.target, None)  # plaintext
    # The metrics endpoint serves HTTPS with the same certificate.
    context = ssl.create_default_context(cafile=str(ca.pem))
    with urllib.request.urlopen(f"https://127.0.0.1:{server.server.metrics_port}/metrics", context=context) as r:
        assert b"ltrr_decisions_total" in r.read()


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(make_server: Any, sqlite_url: str,
                                                                   tmp_path: Path) -> None:
    ca, clients, other = Authority(tmp_path, "ca"), Authority(tmp_path, "clients"), Authority(tmp_path, "other")
    pair = ca.issue("server", "ltrr", server=True)
    server = make_server(server_settings(sqlite_url, tls_cert=str(pair.cert), tls_key=str(pair.key),
                                         tls_client_ca=str(clients.pem)))
    good = clients.issue("frontend", "search-frontend", server=False)
    bad = other.issue("intruder", "intruder", server=False)
    assert works(server.target, ChannelTls(ca=str(ca.pem), cert=str(good.cert), key=str(good.key)))
    assert not works(server.target, ChannelTls(ca=str(ca.pem)))
    assert not works(server.target, ChannelTls(ca=str(ca.pem), cert=str(bad.cert), key=str(bad.key)))


def test_a_renewed_certificate_is_served_without_a_restart(make_server: Any, sqlite_url: str, tmp_path: Path) -> None:
    old_ca, new_ca = Authority(tmp_path, "old"), Authority(tmp_path, "new")
    live = old_ca.issue("server", "ltrr", server=True)
    server = make_server(server_settings(sqlite_url, tls_cert=str(live.cert), tls_key=str(live.key)))
    assert works(server.target, ChannelTls(ca=str(old_ca.pem)))
    renewed = new_ca.issue("renewed", "ltrr", server=True)
    time.sleep(0.05)  # a later modification time than the first files'
    shutil.copy(renewed.key, live.key)
    shutil.copy(renewed.cert, live.cert)
    deadline = time.monotonic() + 5
    while not works(server.target, ChannelTls(ca=str(new_ca.pem))):
        assert time.monotonic() < deadline, "the renewed certificate was not served within 5 s"
        time.sleep(0.2)
    assert not works(server.target, ChannelTls(ca=str(old_ca.pem)))


@pytest.mark.parametrize("changes,field", [
    (dict(tls_cert="a.pem"), "server.tls_key"),
    (dict(tls_key="a.pem"), "server.tls_cert"),
    (dict(tls_client_ca="ca.pem"), "server.tls_client_ca"),
    (dict(metrics_tls=True), "server.metrics_tls"),
])
def test_incomplete_tls_settings_name_the_setting(sqlite_url: str, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        server_settings(sqlite_url, **changes)
    assert err.value.field == field


def test_unreadable_certificate_files_stop_the_start(make_server: Any, sqlite_url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        ServerThread(server_settings(sqlite_url, tls_cert=str(tmp_path / "missing.pem"),
                                     tls_key=str(tmp_path / "missing-key.pem")))
    assert err.value.field == "server.tls_cert" and "missing.pem" in err.value.message


def test_the_cli_speaks_tls(make_server: Any, sqlite_url: str, tmp_path: Path) -> None:
    ca, clients = Authority(tmp_path, "ca"), Authority(tmp_path, "clients")
    pair = ca.issue("server", "ltrr", server=True)
    me = clients.issue("me", "me", server=False)
    server = make_server(server_settings(sqlite_url, tls_cert=str(pair.cert), tls_key=str(pair.key),
                                         tls_client_ca=str(clients.pem)))
    out = subprocess.run([sys.executable, "-m", "ltrr_client.cli", "policies", "get", "demo", "--target", server.target,
                          "--tls-ca", str(ca.pem), "--tls-cert", str(me.cert), "--tls-key", str(me.key)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"name": "demo"' in out.stdout  # the admin service answered over mutual TLS
