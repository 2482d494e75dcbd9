"""Decide over TLS against the same server without it, in one run.

    python -m bench.bench_tls [--seconds 5] [--rounds 3]

Two `ltrr serve` processes on the embedded demo's decision policy (no retrieval), one plaintext and
one with a certificate made for the run (a P-256 key signed by a CA made for the run); each round
measures unary Decide with 64 calls in flight on one channel to each, plaintext first. The ratio
is TLS over plaintext (the issue's bar: at least 0.8, keys included once they exist).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import grpc

from bench.common import LtrrProcess, closed_loop, save
from ltrr.v1 import decisions_pb2_grpc
from ltrr_client.client import decide_request
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


async def rate(target: str, seconds: float, credentials: grpc.ChannelCredentials | None) -> float:
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    async with channel as ch:
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
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.pem.read_bytes())
    plain = LtrrProcess(CONFIG.format(tls=""), metrics=False)
    try:
        secure = LtrrProcess(CONFIG.format(tls=f'tls_cert = "{pair.cert}"\ntls_key = "{pair.key}"'), metrics=False,
                             credentials=credentials)
    except BaseException:
        plain.stop()
        raise
    rounds = []
    try:
        for _ in range(args.rounds):
            p = asyncio.run(rate(plain.target, args.seconds, None))
            t = asyncio.run(rate(secure.target, args.seconds, credentials))
            rounds.append({"plaintext": round(p), "tls": round(t), "ratio": round(t / p, 2)})
            print(rounds[-1])
    finally:
        plain.stop()
        secure.stop()
    save("tls", {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds)})


if __name__ == "__main__":
    main()
