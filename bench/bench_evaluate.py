"""EvaluatePolicy, ExportEvents and ImportEvents over a million logged events, against a bare
read and a bare bulk insert of the same rows.

    python -m bench.bench_evaluate [--events 1000000] [--db URL]

A log of ``--events`` joined decisions is written straight into a fresh database (10 actions, a
context of user segment (20), device (3) and one number, Bernoulli rewards from a logistic
world, each decision drawn from a known stochastic logging policy). Then `ltrr serve` runs on
it, and two evaluations are timed from the client, progress to result:

- **fast**: IPS and SNIPS of uniform, one constant action and a table keyed by segment;
- **replay**: the same plus a candidate configuration replayed over the log, with DR (its
  reward model learns and predicts every event too).

Then the whole log is exported as DSJSON (ExportEvents, to a file) and imported again into a
second policy under new event ids (ImportEvents, batches of 1,000 lines, each committed, joined
and handed to the learner before the next).

The ceilings, measured in the same run: for evaluation and export, a bare pass over the same rows
in this process (the same SQL join, the three JSON columns every target needs decoded); for
import, the bare SQLAlchemy bulk insert that wrote the log (decisions and joins, 20,000 a
transaction). Memory: the peak resident size of the job's process (evaluation, export), and of
the server (import), polled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import LtrrProcess, rss_mb, save
from ltrr.v1 import admin_pb2, admin_pb2_grpc
from ltrr_server.log import db
from ltrr_server.log import schema as t
from ltrr_server.log.events import read_events

N_ACTIONS = 10
POLICY = f"""
[server]
journal_dir = "none"

[[policies]]
name = "offline"
exploration = "epsilon"
actions = [{", ".join(f'{{ id = "a{i}" }}' for i in range(N_ACTIONS))}]

[[policies]]
name = "imported"
exploration = "epsilon"
actions = [{", ".join(f'{{ id = "a{i}" }}' for i in range(N_ACTIONS))}]
"""


def write_log(db_url: str, n: int, seed: int = 1) -> float:
    """``n`` joined decisions of policy "offline"; returns the seconds it took."""
    rng = random.Random(seed)
    started = time.perf_counter()
    engine = db.create_engine(db_url)
    db.migrate(engine)
    seg_effect = [[rng.gauss(0, 1) for _ in range(N_ACTIONS)] for _ in range(20)]
    dev_effect = [[rng.gauss(0, 0.5) for _ in range(N_ACTIONS)] for _ in range(3)]
    actions = json.dumps([[f"a{i}", [["f", [["k", float(i % 3)]]]]] for i in range(N_ACTIONS)])
    t0 = 1_700_000_000.0
    chunk = 20_000
    for start in range(0, n, chunk):
        decisions, joined = [], []
        for k in range(start, min(n, start + chunk)):
            seg, dev, num = rng.randrange(20), rng.randrange(3), rng.random()
            # The logging policy: favours its guess of the best action, explores the rest.
            guess = (seg + dev) % N_ACTIONS
            probs = [0.5 if i == guess else 0.5 / (N_ACTIONS - 1) for i in range(N_ACTIONS)]
            a = guess if rng.random() < 0.5 else rng.choice([i for i in range(N_ACTIONS) if i != guess])
            mean = 1 / (1 + math.exp(-(seg_effect[seg][a] + dev_effect[dev][a] - 1.0)))
            context = [["user", [["seg", f"s{seg}"], ["num", num]]], ["device", [["kind", f"d{dev}"]]]]
            event_id = f"e{k}"
            decisions.append(dict(event_id=event_id, policy="offline", lineage=1, created_at=t0 + k * 0.01,
                                  deadline=t0 + k * 0.01 + 10, context=json.dumps(context), actions=actions,
                                  probabilities=json.dumps([probs]), chosen=json.dumps([a]), explored=a != guess,
                                  model_version=0, learn=True))
            joined.append(dict(seq=k + 1, event_id=event_id, policy="offline", reward=float(rng.random() < mean),
                               n_rewards=1, source="reward", joined_at=t0 + k * 0.01 + 1))
        with engine.begin() as conn:
            conn.execute(sa.insert(t.decisions), decisions)
            conn.execute(sa.insert(t.joined), joined)
        print(f"  wrote {min(n, start + chunk):,}/{n:,} events", end="\r", flush=True)
    print()
    engine.dispose()
    return time.perf_counter() - started


def bare_pass(db_url: str) -> float:
    from ltrr_server.log.store import EventLogStore

    engine = db.create_engine(db_url)
    started = time.perf_counter()
    n = sum(1 for _ in read_events(EventLogStore(engine), "offline", 0.0, 4e9))
    seconds = time.perf_counter() - started
    engine.dispose()
    print(f"  bare pass: {n:,} events in {seconds:.1f}s")
    return seconds


def children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


class PeakRss:
    """The peak RSS (MB) of the server's new child processes (``children=True``) or of the server."""

    def __init__(self, server: LtrrProcess, children_only: bool = True) -> None:
        self.peak = 0.0
        self._done = threading.Event()
        pid = server.proc.pid
        before = children(pid)

        def poll() -> None:
            while not self._done.is_set():
                for p in (children(pid) - before) if children_only else {pid}:
                    try:
                        self.peak = max(self.peak, rss_mb(p))
                    except OSError:
                        pass
                time.sleep(0.2)

        threading.Thread(target=poll, daemon=True).start()

    def stop(self) -> float:
        self._done.set()
        return self.peak


def timed_evaluation(server: LtrrProcess, request: admin_pb2.EvaluatePolicyRequest) -> tuple[float, float, Any]:
    """Seconds from the call to its result, the evaluation process's peak RSS (MB), the result."""
    import grpc

    rss = PeakRss(server)
    stub = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(server.target))
    started = time.perf_counter()
    result = None
    for update in stub.EvaluatePolicy(request, timeout=3600):
        print(f"  {update.events_done:,}/{update.events_total:,} ({time.perf_counter() - started:.0f}s)",
              end="\r", flush=True)
        if update.HasField("result"):
            result = update.result
    seconds = time.perf_counter() - started
    print()
    return seconds, rss.stop(), result


def timed_export(server: LtrrProcess, path: Path) -> tuple[float, float, int]:
    """Seconds to export every event of "offline" to ``path``, the job's peak RSS, lines written."""
    import grpc

    rss = PeakRss(server)
    stub = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(server.target))
    started = time.perf_counter()
    n = 0
    with path.open("w") as f:
        for chunk in stub.ExportEvents(admin_pb2.ExportEventsRequest(name="offline"), timeout=3600):
            for line in chunk.lines:
                f.write(line.replace('"EventId":"e', '"EventId":"i-e', 1) + "\n")  # new ids for the import
            n += len(chunk.lines)
            print(f"  exported {n:,}/{chunk.events_total:,}", end="\r", flush=True)
    print()
    return time.perf_counter() - started, rss.stop(), n


def timed_import(server: LtrrProcess, path: Path, batch: int = 1000) -> tuple[float, float, int]:
    """Seconds to import ``path`` into policy "imported" (the last batch's commit), the server's peak
    RSS, lines imported."""
    import grpc

    def batches():  # type: ignore[no-untyped-def]
        lines: list[str] = []
        with path.open() as f:
            for text in f:
                lines.append(text.rstrip("\n"))
                if len(lines) == batch:
                    yield admin_pb2.ImportBatch(policy="imported", lines=lines)
                    lines = []
        if lines:
            yield admin_pb2.ImportBatch(policy="imported", lines=lines)

    rss = PeakRss(server, children_only=False)
    stub = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(server.target))
    started = time.perf_counter()
    imported = 0
    for result in stub.ImportEvents(batches(), timeout=3600):
        imported += result.imported
        if result.errors:
            raise RuntimeError(f"import refused lines: {result.errors[0]}")
        print(f"  imported {imported:,}", end="\r", flush=True)
    print()
    return time.perf_counter() - started, rss.stop(), imported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--db", help="database URL (default: SQLite in a temporary folder)")
    ap.add_argument("--only", choices=["evaluate", "dsjson"],
                    help="time only the evaluations, or only export and import")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ltrr-bench-evaluate-"))
    db_url = args.db or f"sqlite:///{folder / 'ltrr.db'}"
    write_seconds = write_log(db_url, args.events)
    bare = bare_pass(db_url)
    server = LtrrProcess(POLICY, db_url=db_url, directory=folder)
    try:
        table = admin_pb2.TableTarget(
            feature="user.seg", default_weights=[admin_pb2.ActionWeight(action="a0", weight=1)],
            by_value=[admin_pb2.FeatureTable(value=f"s{s}", weights=[admin_pb2.ActionWeight(action=f"a{s % N_ACTIONS}",
                                                                                             weight=1)])
                      for s in range(20)])
        fast_targets = [admin_pb2.EvaluationTarget(uniform=True), admin_pb2.EvaluationTarget(action="a3"),
                        admin_pb2.EvaluationTarget(table=table, name="by segment")]
        figures: dict[str, Any] = {"events": args.events, "write_seconds": round(write_seconds, 1),
                                   "bare_pass_seconds": round(bare, 1)}
        if args.only != "dsjson":
            fast_s, fast_mb, fast = timed_evaluation(server, admin_pb2.EvaluatePolicyRequest(
                name="offline", targets=fast_targets,
                estimators=[admin_pb2.ESTIMATOR_IPS, admin_pb2.ESTIMATOR_SNIPS]))
            candidate = admin_pb2.EvaluationTarget(name="candidate", candidate=admin_pb2.PolicySpec(
                exploration=admin_pb2.EXPLORATION_SQUARECB))
            replay_s, replay_mb, replay = timed_evaluation(server, admin_pb2.EvaluatePolicyRequest(
                name="offline", targets=[*fast_targets, candidate]))
            figures |= {
                "fast_seconds": round(fast_s, 1), "fast_bare_over_evaluation": round(bare / fast_s, 2),
                "fast_peak_rss_mb": round(fast_mb), "fast_events": fast.events,
                "replay_seconds": round(replay_s, 1), "replay_peak_rss_mb": round(replay_mb),
                "estimates": {t.name: {k: round(getattr(t.slots[0], k).value, 4) for k in ("ips", "snips", "dr")
                                       if t.slots[0].HasField(k)} for t in replay.targets},
            }
        if args.only != "evaluate":
            dsjson = folder / "offline.dsjson"
            export_s, export_mb, exported = timed_export(server, dsjson)
            import_s, import_mb, imported = timed_import(server, dsjson)
            figures |= {
                "export_seconds": round(export_s, 1), "export_bare_over_export": round(bare / export_s, 2),
                "export_peak_rss_mb": round(export_mb), "exported": exported,
                "dsjson_mb": round(dsjson.stat().st_size / 1e6),
                "import_seconds": round(import_s, 1),
                "import_bulk_insert_over_import": round(write_seconds / import_s, 2),
                "import_server_peak_rss_mb": round(import_mb), "imported": imported,
            }
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)  # a million events are 0.8 GB of SQLite
    save("evaluate" if not args.only else f"evaluate-{args.only}", figures)


if __name__ == "__main__":
    main()
