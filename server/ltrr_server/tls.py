"""TLS for the gRPC port: the certificate and key read from files, and read again when they change.

``server_credentials`` gives gRPC a fetcher it calls at every new connection's handshake: when
the files' modification times changed, the new pair is loaded (connections open before keep the
old one), so a certificate renewed on disk (cert-manager, certbot) is served without a restart.
A pair that does not load (a half-written file) is logged and the old one kept until the next
change. With a client CA, clients must present a certificate it signed (mutual TLS).

>>> files = TlsFiles(cert="server.pem", key="server-key.pem")
>>> files.mutual
False
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import grpc

from ltrr_server.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA that signs client certificates."""

    cert: str
    key: str
    client_ca: str = ""

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)

    def paths(self) -> tuple[str, ...]:
        return (self.cert, self.key, self.client_ca) if self.client_ca else (self.cert, self.key)


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgument(field, f"cannot read {path}: {exc.strerror}") from exc


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    cert, key = _read(files.cert, "server.tls_cert"), _read(files.key, "server.tls_key")
    if b"-----BEGIN" not in cert or b"-----BEGIN" not in key:
        raise InvalidArgument("server.tls_cert", "the certificate and key must be PEM files")
    ca = _read(files.client_ca, "server.tls_client_ca") if files.client_ca else None
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def _mtimes(files: TlsFiles) -> tuple[float, ...]:
    out = []
    for path in files.paths():
        try:
            out.append(os.stat(path).st_mtime)
        except OSError:
            out.append(-1.0)
    return tuple(out)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials whose certificate follows the files; raises InvalidArgument if they do not load now."""
    initial = _configuration(files)
    lock = threading.Lock()
    seen = [_mtimes(files)]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        now = _mtimes(files)
        with lock:
            if now == seen[0]:
                return None  # unchanged: gRPC keeps the current one
            seen[0] = now
        try:
            config = _configuration(files)
        except Exception as exc:  # a file being rewritten: keep the old pair, try at the next change
            log.warning("TLS certificate files changed but do not load (%s); still serving the previous ones", exc)
            return None
        log.info("TLS certificate reloaded from %s", files.cert)
        return config

    # The stubs say the fetcher returns a configuration; gRPC documents None as "keep the current one".
    return grpc.dynamic_ssl_server_credentials(initial, fetch,  # type: ignore[arg-type]
                                               require_client_authentication=files.mutual)
