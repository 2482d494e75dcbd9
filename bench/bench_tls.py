"""Decide over TLS, and over TLS with a bearer key, against the same server without them, in one run.

    python -m bench.bench_tls [--seconds 5] [--rounds 3]

Three `ltrr serve` processes on the embedded demo's decision policy (no retrieval): plaintext with
no authentication; TLS with a certificate made for the run (a P-256 key signed by a CA made for
the run); and TLS with ``auth = "keys"``, called with a key made on its database beforehand. Each
round measures unary Decide with 64 calls in flight on one channel to each, in that order. The
ratios are over plaintext (the issue's bar: TLS with a key at least 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.common import LtrrProcess, closed_loop, save
from ltrr.v1 import decisions_pb2_grpc
from ltrr_client.client import ChannelTls, aio_channel, decide_request
from ltrr_server.keys import KeyStore, NewKey
from ltrr_server.log import db
from tests.tls_certs import Authority

REQUEST = decide_request("demo", {"user": {"segment": "s3"}, "time": {"part": "evening"}})
CONFIG = """
[server]
journal_dir = "none"
{tls}

[[policies]]
name = "demo"
actions = [{{ id = "news" }}, {{ id = "sports" }}, {{ id = "music" }}, {{ id = "movies" }}]
"""


async def rate(target: str, seconds: float, tls: ChannelTls | None, api_key: str = "") -> float:
    async with aio_channel(target, tls, api_key) as ch:
        stub = decisions_pb2_grpc.DecisionServiceStub(ch)
        return await closed_loop(lambda: stub.Decide(REQUEST), seconds, 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ltrr-bench-tls-"))
    ca = Authority(folder)
    pair = ca.issue("server", "ltrr", server=True)
    tls = ChannelTls(ca=str(ca.pem))
    credentials = tls.credentials()
    tls_conf = f'tls_cert = "{pair.cert}"\ntls_key = "{pair.key}"'
    keyed_dir = folder / "keyed"
    keyed_dir.mkdir()
    keyed_db = f"sqlite:///{keyed_dir / 'ltrr.db'}"
    engine = db.create_engine(keyed_db)
    db.migrate(engine)
    _, key = KeyStore(engine).create(NewKey("default", ("decide",), name="bench"))
    engine.dispose()
    servers: list[LtrrProcess] = []
    rounds = []
    try:
        servers.append(LtrrProcess(CONFIG.format(tls=""), metrics=False))
        servers.append(LtrrProcess(CONFIG.format(tls=tls_conf), metrics=False, credentials=credentials))
        servers.append(LtrrProcess(CONFIG.format(tls=tls_conf + '\nauth = "keys"'), db_url=keyed_db,
                                   directory=keyed_dir, metrics=False, credentials=credentials))
        plain, secure, keyed = servers
        for _ in range(args.rounds):
            p = asyncio.run(rate(plain.target, args.seconds, None))
            t = asyncio.run(rate(secure.target, args.seconds, tls))
            k = asyncio.run(rate(keyed.target, args.seconds, tls, key))
            rounds.append({"plaintext": round(p), "tls": round(t), "tls_key": round(k), "ratio": round(t / p, 2),
                           "key_ratio": round(k / p, 2)})
            print(rounds[-1])
    finally:
        for server in servers:
            server.stop()
    save("tls", {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds),
                 "median_key_ratio": statistics.median(r["key_ratio"] for r in rounds)})


if __name__ == "__main__":
    main()
