"""The server package's ``ltrr`` commands, those that run in this process on a database, a model
directory or the demo world: serve, ingest, train, register, eval xmr/autocomplete, keys, audit,
db, simulate. ``ltrr_client.cli`` adds them to the one ``ltrr`` command through the entry point
``ltrr.commands`` (pyproject.toml)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from ltrr_client.cli import (
    _client,
    _tls_flags,
    input_file,
    non_negative_int,
    positive_float,
    positive_int,
    time_arg,
)

ClientCommand = Callable[[str, str], argparse.ArgumentParser]


def cmd_serve(args: argparse.Namespace) -> int:
    from ltrr_server.app import main as serve_main
    from ltrr_server.config import load_settings
    from ltrr_server.errors import InvalidArgument, LtrrError

    try:
        settings = load_settings(args.config, db_url=args.db, grpc_port=args.grpc_port,
                                 metrics_port=args.metrics_port, grpc_host=args.host, metrics_host=args.metrics_host,
                                 tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                                 auth=args.auth, insecure=args.insecure or None, admin_port=args.admin_port,
                                 admin_host=args.admin_host, reflection=False if args.no_reflection else None,
                                 log_level=args.log_level, log_format=args.log_format)
    except (InvalidArgument, OSError) as exc:
        print(f"ltrr serve: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        serve_main(settings)
    except OSError as exc:  # the port is taken, the address cannot be bound: nothing was started
        print(f"ltrr serve: {exc}", file=sys.stderr)
        return 1
    except LtrrError as exc:  # a start the database refused (the config file against a stored policy)
        print(f"ltrr serve: start-up failed: {exc}", file=sys.stderr)
        return 2
    return 0


def sr_ladders(text: str | None) -> dict[str, tuple[int, ...]] | None:
    from ltrr_server.simulation.retrieval import parse_ladders

    return parse_ladders(text) if text else None


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.mode == "retrieval":
        from ltrr_server.simulation import retrieval as sr

        sim = asyncio.run(sr.run_retrieval_simulation(
            args.target, args.policy if args.policy != "demo" else "retrieval", args.events, args.report_every,
            n_items=args.items, world_seed=args.world_seed, seed=args.seed,
            ladders=sr.parse_ladders(args.ladders) if args.ladders else None, cost=args.cost,
            tail=min(5000, args.events // 4),
        ))
        if args.plot:
            sr.plot(sim, args.plot)
            print(f"plot written to {args.plot}")
        return 0
    if args.mode == "search":
        from ltrr_server.simulation import search as ss

        search = asyncio.run(ss.run_search_simulation(
            args.target, args.policy if args.policy != "demo" else "retrieval", args.events, args.report_every,
            n_items=args.items, world_seed=args.world_seed, seed=args.seed, eta=args.eta,
            ladders=sr_ladders(args.ladders), tail=min(5000, args.events // 4),
            models=args.models.split(",") if args.models else (),
        ))
        if args.plot:
            ss.plot(search, args.plot)
            print(f"plot written to {args.plot}")
        return 0
    from ltrr_client.simulate import plot, run_simulation

    result = asyncio.run(run_simulation(args.target, args.policy, args.events, args.report_every,
                                        segments=args.segments, seed=args.seed))
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _offline_settings(args: argparse.Namespace) -> Any:
    """Settings for a command that works on the database and index directory directly:
    the configuration, ``--db``, and ``--data-dir`` over ``retrieval.data_dir``."""
    import dataclasses

    from ltrr_server.config import load_settings

    settings = load_settings(args.config, db_url=args.db)
    if args.data_dir:
        settings = dataclasses.replace(settings, retrieval=dataclasses.replace(settings.retrieval,
                                                                               data_dir=args.data_dir))
    return settings


def _migrated_engine(db_url: str) -> Any:
    """An engine on the database at ``db_url``, its schema brought to the newest revision."""
    from ltrr_server.log import db

    engine = db.create_engine(db_url)
    db.migrate(engine)
    return engine


def _registry(settings: Any) -> Any:
    """The model registry of these settings: their database (migrated) and model directory."""
    from ltrr_server.xmr.registry import ModelRegistry

    return ModelRegistry(_migrated_engine(settings.db_url), settings.model_dir)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Offline ingest into the server's database and index directory (restart the server after)."""
    from prometheus_client import CollectorRegistry
    from tqdm import tqdm

    from ltrr_server.catalog.ingest import read_catalog
    from ltrr_server.errors import InvalidArgument
    from ltrr_server.log import db
    from ltrr_server.metrics import Metrics
    from ltrr_server.retrieval.retriever import Retriever

    try:
        settings = _offline_settings(args)
        if not settings.retrieval.enabled:
            raise InvalidArgument("retrieval.strategies", "the configuration has no retrieval strategies")
        items, errors = read_catalog(args.file)
    except (InvalidArgument, OSError, ValueError) as exc:
        print(f"ltrr ingest: {exc}", file=sys.stderr)
        return 2
    for e in errors[:50]:
        print(f"ltrr ingest: skipped {e}", file=sys.stderr)
    if len(errors) > 50:
        print(f"ltrr ingest: ... and {len(errors) - 50} more bad lines", file=sys.stderr)
    if errors and args.strict:
        print(f"ltrr ingest: {len(errors)} bad lines and --strict: nothing ingested", file=sys.stderr)
        return 1
    engine = db.create_engine(settings.db_url)
    db.migrate(engine)
    retriever = Retriever(settings.retrieval, engine, Metrics(CollectorRegistry()))
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="item", file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    t0 = time.perf_counter()
    try:
        changes = retriever.ingest(items, progress)
    except InvalidArgument as exc:
        print(f"ltrr ingest: {exc}", file=sys.stderr)
        return 1
    finally:
        retriever.close()
    seconds = time.perf_counter() - t0
    for item_id, problem in changes.rejected[:50]:
        print(f"ltrr ingest: skipped item {item_id!r}: {problem}", file=sys.stderr)
    print(json.dumps({"added": len(changes.added), "updated": len(changes.updated), "unchanged": changes.unchanged,
                      "bad_lines": len(errors) + len(changes.rejected), "seconds": round(seconds, 2),
                      "items_per_second": round(len(items) / seconds) if seconds else None}))
    return 1 if errors or changes.rejected else 0


def cmd_train_xmr(args: argparse.Namespace) -> int:
    """Offline training into the registry (the database and the model directory); promote after."""

    from tqdm import tqdm

    from ltrr_server.config import load_settings
    from ltrr_server.errors import LtrrError
    from ltrr_server.xmr import train as xt
    from ltrr_server.xmr.live import LiveModels
    from ltrr_server.xmr.model import XmrTrainParams

    try:
        settings = load_settings(args.config, db_url=args.db)
        params = XmrTrainParams(beam_size=args.beam_size, threshold=args.threshold, nr_splits=args.nr_splits,
                                max_leaf_size=args.max_leaf_size, congruent=args.congruent)
        registry = _registry(settings)
        if args.pairs:
            with open(args.pairs, encoding="utf-8") as f:
                pairs, errors = xt.read_pairs(f)
            for e in errors[:50]:
                print(f"ltrr train: skipped {e}", file=sys.stderr)
        elif args.demo_pairs:
            from ltrr_server.demo.music import MusicWorld

            pairs = xt.demo_pairs(MusicWorld(n_items=args.items, seed=args.world_seed), args.demo_pairs, args.seed)
        else:
            pairs = xt.pairs_from_log(registry.engine)
        live = None
        if params.congruent > 0:
            models = LiveModels(registry)
            models.load_all()
            live = models.get(args.name)[1]
        bar = tqdm(total=4, desc="train xmr", file=sys.stderr)

        def progress(stage: str, done: int, total: int) -> None:
            bar.set_description(stage)
            bar.update(done - bar.n)

        version, metrics = xt.train(registry, args.name, pairs, params, live=live, heldout_share=args.heldout_share,
                                    progress=progress)
        bar.close()
    except (LtrrError, OSError, ValueError) as exc:
        print(f"ltrr train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"name": args.name, "version": version} | metrics))
    return 0


def cmd_eval_xmr(args: argparse.Namespace) -> int:
    """Recall@10/@100 of a model version against lexical and vector, on its held-out pairs (offline)."""
    import dataclasses

    from prometheus_client import CollectorRegistry

    from ltrr_server.errors import LtrrError
    from ltrr_server.metrics import Metrics
    from ltrr_server.retrieval.retriever import Retriever
    from ltrr_server.xmr.evaluate import recall_table
    from ltrr_server.xmr.model import XmrModel
    from ltrr_server.xmr.train import HELDOUT_FILE

    try:
        settings = _offline_settings(args)
        registry = _registry(settings)
        row = registry.get(args.name, args.version)
        model = XmrModel.load(Path(row["path"]))
        held = json.loads((Path(row["path"]) / HELDOUT_FILE).read_text())
        retriever = Retriever(dataclasses.replace(settings.retrieval, demo_items=0), registry.engine,
                              Metrics(CollectorRegistry()))
    except (LtrrError, OSError, ValueError) as exc:
        print(f"ltrr eval: {exc}", file=sys.stderr)
        return 2
    queries, items = held["queries"][:args.limit], held["items"][:args.limit]
    catalog = retriever.catalog

    def via(strategy: str) -> Any:
        s = retriever.strategies[strategy]
        return lambda q, k: [catalog.ids[p] for p, _ in s.retrieve(retriever.prepare(q, []), k)]

    methods: dict[str, Any] = {
        f"xmr {args.name} v{row['version']}": lambda q, k: [i for i, _ in model.predict([q], k)[0]],
    }
    for name in ("lexical", "vector"):
        if name in retriever.strategies and len(catalog):
            methods[name] = via(name)
    table = recall_table(methods, queries, items)
    retriever.close()
    print(f"{len(queries)} held-out pairs of {args.name} v{row['version']}")
    print(f"{'method':<24} {'recall@10':>10} {'recall@100':>11} {'ms/query@100':>13}")
    for name, r in table.items():
        print(f"{name:<24} {r['recall_at_10']:>10.3f} {r['recall_at_100']:>11.3f} {r['ms_per_query_at_100']:>13.3f}")
    return 0


def _sessions(args: argparse.Namespace, seed: int) -> list[list[str]]:
    """Sessions from a JSONL file ({"queries": [...]} per line) or from the demo music world."""
    from ltrr_server.autocomplete.sessions import demo_sessions
    from ltrr_server.catalog.catalog import normalize

    if args.sessions:
        out = []
        with open(args.sessions, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    qs = json.loads(line)["queries"]
                    out.append([normalize(q) for q in qs if isinstance(q, str) and normalize(q)])
                except (json.JSONDecodeError, KeyError, TypeError):
                    print(f"ltrr: skipped line {n}: not {{\"queries\": [...]}}", file=sys.stderr)
        return [s for s in out if s]
    from ltrr_server.demo.music import MusicWorld

    return demo_sessions(MusicWorld(n_items=args.items, seed=args.world_seed), args.demo_sessions, seed=seed)


def cmd_train_ranker(args: argparse.Namespace) -> int:
    """A LambdaMART ranker from the logged Search pages of a policy, registered as a new version."""
    from tqdm import tqdm

    from ltrr_server.config import load_settings
    from ltrr_server.errors import LtrrError
    from ltrr_server.ranking.lambdamart import LambdaMartParams, train_ranker

    # One bar per stage: reading counts pages (no total known), boosting counts trees; the trees'
    # bar starts after the first tree, which carries LightGBM's set-up, so its estimate of the
    # time left is not thrown by it.
    bars: dict[str, Any] = {}
    try:
        settings = load_settings(args.config, db_url=args.db)
        params = LambdaMartParams(trees=args.trees, learning_rate=args.learning_rate, num_leaves=args.num_leaves,
                                  min_data_in_leaf=args.min_data_in_leaf, debias=not args.no_debias,
                                  seed=args.seed or 1)
        registry = _registry(settings)

        def progress(stage: str, done: int, total: int) -> None:
            bar = bars.get(stage)
            if bar is None:
                for other in bars.values():
                    other.close()
                bar = bars[stage] = tqdm(total=total or None, desc=stage, unit=" trees" if total else " pages",
                                         file=sys.stderr, mininterval=1.0)
            bar.update(done - bar.n)

        from ltrr_client.evaluation import parse_time

        version, metrics = train_ranker(registry, args.name, args.policy, params,
                                        since=parse_time(args.since) / 1000.0 if args.since else 0.0,
                                        progress=progress)
    except (LtrrError, OSError, ValueError) as exc:
        print(f"ltrr train: {exc}", file=sys.stderr)
        return 2
    finally:
        for bar in bars.values():
            bar.close()
    print(json.dumps({"name": args.name, "version": version} | metrics))
    return 0


def cmd_train_autocomplete(args: argparse.Namespace) -> int:
    from ltrr_server.autocomplete.model import AutocompleteModel, AutocompleteParams
    from ltrr_server.config import load_settings
    from ltrr_server.errors import LtrrError

    try:
        settings = load_settings(args.config, db_url=args.db)
        params = AutocompleteParams(index=args.index, trie_depth=args.trie_depth, cluster_size=args.cluster_size,
                                    beam_size=args.beam_size, prefixes_per_query=args.prefixes_per_query)
        sessions = _sessions(args, args.seed)
        registry = _registry(settings)
        model = AutocompleteModel.train(sessions, params, progress=lambda s, a, b: print(f"  {s}", file=sys.stderr))
        version = registry.register(args.name, "autocomplete", model, model.meta)
    except (LtrrError, OSError, ValueError) as exc:
        print(f"ltrr train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"name": args.name, "version": version} | model.meta))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from ltrr_server.config import load_settings
    from ltrr_server.errors import LtrrError

    try:
        registry = _registry(load_settings(args.config, db_url=args.db))
        version = registry.register(args.name, args.what, Path(args.folder),
                                    {"source": str(Path(args.folder).resolve())})
    except (LtrrError, OSError, ValueError) as exc:
        print(f"ltrr register: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"name": args.name, "version": version}))
    return 0


def cmd_eval_autocomplete(args: argparse.Namespace) -> int:
    """Trains every label index on the same sessions; MRR@10 and success@1 by prefix length on held-out ones."""
    from ltrr_server.autocomplete.evaluate import evaluate
    from ltrr_server.autocomplete.model import INDEXES, AutocompleteModel, AutocompleteParams, MostPopular

    train, held = _sessions(args, args.seed), _sessions(args, args.seed + 1000)
    if args.sessions:  # one file: the last tenth of its sessions is held out
        cut = len(train) * 9 // 10
        train, held = train[:cut], train[cut:]
    held = held[:args.limit]
    methods: dict[str, Any] = {}
    for index in INDEXES:
        t0 = time.perf_counter()
        m = AutocompleteModel.train(train, AutocompleteParams(index=index))
        print(f"trained {index} in {time.perf_counter() - t0:.1f}s ({m.meta['labels']} labels)", file=sys.stderr)
        methods[index] = lambda prev, prefix, k, m=m: [q for q, _ in m.complete(prev, prefix, k)]
    popular = MostPopular([q for s in train for q in s])
    methods["most popular"] = lambda prev, prefix, k: [q for q, _ in popular.complete(prefix, k)]
    table = evaluate(methods, held)
    print(f"{'method':<14} {'prefix':>6} {'MRR@10':>7} {'success@1':>10} {'p50 ms':>7} {'p99 ms':>7}")
    for name, rows in table.items():
        for n, r in rows.items():
            print(f"{name:<14} {n:>6} {r['mrr_at_10']:>7.3f} {r['success_at_1']:>10.3f} {r['p50_ms']:>7.2f} "
                  f"{r['p99_ms']:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    return 0


def _database_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--config and --db: the configuration, and the database of a command that runs in-process."""
    p.add_argument("--config", help=f"{prefix}TOML configuration file (default: $LTRR_CONFIG, else the embedded demo)")
    p.add_argument("--db", help=f"{prefix}database URL (default: the configuration's)")


def _local_or_remote_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="through this server's admin service (an admin key); without it, directly on "
                                    "the database")
    _tls_flags(p)
    _database_flags(p)


def _local_actor() -> Any:
    """Who ``ltrr keys``/``ltrr audit`` acts as on the database itself: the machine's user."""
    import getpass

    from ltrr_server.keys import ROLES, Identity
    from ltrr_server.tenancy import DEFAULT_TENANT

    return Identity("", DEFAULT_TENANT, frozenset(ROLES), name=f"local:{getpass.getuser()}")


def _engine(args: argparse.Namespace) -> Any:
    from ltrr_server.config import load_settings

    return _migrated_engine(load_settings(args.config, db_url=args.db).db_url)


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys, on the database itself (any tenant) or through a server (the caller's tenant)."""
    from ltrr_server.errors import LtrrError

    if args.action == "revoke" and not args.id:
        print("ltrr keys revoke: name the key: ltrr keys revoke ID", file=sys.stderr)
        return 2
    if args.action == "create" and not args.role:
        print("ltrr keys create: give the key a role: --role decide|feedback|admin (repeatable)", file=sys.stderr)
        return 2
    if args.target:
        with _client(args) as c:
            if args.action == "create":
                r = c.create_key(args.role, args.tenant or "", args.name, args.subject, args.decisions_per_second,
                                 args.rewards_per_second, args.max_streams)
                out: Any = MessageToDict(r.key, preserving_proto_field_name=True) | {"key": r.secret}
            elif args.action == "list":
                out = [MessageToDict(k, preserving_proto_field_name=True) for k in c.list_keys()]
            else:
                out = MessageToDict(c.revoke_key(args.id), preserving_proto_field_name=True)
    else:
        from ltrr_server.audit import AuditLog
        from ltrr_server.keys import KeyStore, NewKey

        try:
            engine = _engine(args)
            store, audit, who = KeyStore(engine), AuditLog(engine), _local_actor()
            if args.action == "create":
                info, text = store.create(NewKey(
                    args.tenant or "default", tuple(args.role), args.name, args.subject,
                    args.decisions_per_second or None, args.rewards_per_second or None, args.max_streams or None))
                audit.record(who, "key.create", info.id, None, info.to_dict())
                out = info.to_dict() | {"key": text}
            elif args.action == "list":
                out = [k.to_dict() for k in store.list_keys(args.tenant)]
            else:
                before, after = store.revoke(args.id)
                if before.revoked_at is None:
                    audit.record(who, "key.revoke", args.id, before.to_dict(), after.to_dict())
                out = after.to_dict()
        except (LtrrError, OSError) as exc:
            print(f"ltrr keys {args.action}: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(out, indent=2))
    if args.action == "create":
        print("ltrr keys create: the key is shown this once; the server keeps only a hash of it", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit trail, on the database itself or through a server (the caller's tenant)."""
    from ltrr_client.evaluation import parse_time

    since_ms = parse_time(args.since) if args.since else 0  # checked by time_arg
    if args.target:
        with _client(args) as c:
            out = [MessageToDict(e, preserving_proto_field_name=True) for e in c.audit(since_ms, args.limit)]
    else:
        from ltrr_server.audit import AuditLog

        out = [e.to_dict() for e in AuditLog(_engine(args)).list(args.tenant, since_ms / 1000, args.limit)]
    print(json.dumps(out, indent=2))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """The database itself: prune each policy's log by its retention, or back it up (SQLite)."""
    from tqdm import tqdm

    from ltrr_server.config import load_settings
    from ltrr_server.errors import LtrrError
    from ltrr_server.log import backup, retention
    from ltrr_server.log.store import EventLogStore

    try:
        settings = load_settings(args.config, db_url=args.db)
        if args.action == "backup":
            if not args.out:
                print("ltrr db backup: name the file to write: ltrr db backup OUT", file=sys.stderr)
                return 2
            with tqdm(desc="backup", unit="page", file=sys.stderr, delay=2) as bar:  # shown after 2 s

                def copied(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                made = backup.backup(settings.db_url, args.out, copied)
            print(json.dumps({"path": str(made.path), "pages": made.pages, "bytes": made.bytes}))
            return 0
        engine = _migrated_engine(settings.db_url)
        specs = {row["name"]: row["spec"] for row in EventLogStore(engine).load_policies()}
        names = [args.policy] if args.policy else sorted(specs)
        if args.policy and args.policy not in specs:
            print(f"ltrr db prune: --policy: no policy {args.policy!r} in the database", file=sys.stderr)
            return 2
        out = []
        for name in names:
            days = args.older_than_days if args.older_than_days is not None else specs[name].retention_days
            if not days:
                out.append({"policy": name, "skipped": "no retention_days (give --older-than-days)"})
                continue
            with tqdm(desc=f"prune {name}", unit="event", file=sys.stderr, delay=2) as bar:
                pruned = retention.prune_policy(engine, name, retention.retention_cutoff(days),
                                                progress=lambda n: bar.update(n - bar.n))
            out.append({"policy": name, "older_than_days": days, "events": pruned.events,
                        "snapshots": pruned.snapshots, "kept_for_replay": pruned.kept_for_replay})
    except LtrrError as exc:
        print(f"ltrr db {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


def add_eval_arguments(ev: argparse.ArgumentParser) -> None:
    """``ltrr eval xmr`` and ``ltrr eval autocomplete``'s arguments (offline, on the database)."""
    ev.add_argument("--sessions", type=input_file,
                    help='autocomplete: JSONL of {"queries": [...]} (the last tenth is held out)')
    ev.add_argument("--demo-sessions", type=positive_int, default=30_000,
                    help='autocomplete: demo sessions to train and hold out from (default %(default)s)')
    ev.add_argument("--items", type=positive_int, default=100_000,
                    help="xmr, autocomplete: the demo catalog's size (default %(default)s)")
    ev.add_argument("--world-seed", type=int, default=42,
                    help="xmr, autocomplete: the demo world's seed (default %(default)s)")
    ev.add_argument("--seed", type=int, default=1, help='autocomplete: which demo sessions (default %(default)s)')
    ev.add_argument("--name", default="xmr", help='xmr: the model name in the registry (default %(default)s)')
    ev.add_argument("--version", type=non_negative_int, default=0, help="0: the live version")
    _database_flags(ev, "xmr, autocomplete: ")
    ev.add_argument("--data-dir", help="the catalog's index directory (for lexical and vector)")
    ev.add_argument("--limit", type=positive_int, default=5000, help="at most this many held-out pairs (or sessions)")


def add_commands(sub: Any, client_cmd: ClientCommand) -> None:
    """The in-process commands, on ``ltrr``'s sub-parsers."""
    s = sub.add_parser("serve", help="run the server (the embedded demo configuration unless --config or $LTRR_CONFIG)")
    s.add_argument("--config", help='TOML configuration file, or "demo" (default: $LTRR_CONFIG, else the demo)')
    s.add_argument("--db", help="database URL (sqlite:///ltrr.db, postgresql://user@host/db)")
    s.add_argument("--grpc-port", type=int, help='the gRPC port (default: server.grpc_port, 50051; 0: a free one)')
    s.add_argument("--metrics-port", type=int, help="Prometheus port; -1 disables")
    s.add_argument("--host", help="listen address of gRPC (and of the metrics endpoint, unless --metrics-host)")
    s.add_argument("--metrics-host", help="listen address of the metrics endpoint (default: --host's)")
    s.add_argument("--tls-cert", help="serve gRPC over TLS with this certificate chain (PEM; re-read when it changes)")
    s.add_argument("--tls-key", help="the certificate's key (PEM)")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument("--auth", choices=["none", "keys"],
                   help="keys: every call needs an API key with its role (ltrr keys create); default none, "
                        "which binds loopback only")
    s.add_argument("--insecure", action="store_true",
                   help="bind beyond loopback with no authentication (anyone who reaches the port can change "
                        "policies)")
    s.add_argument("--admin-port", type=int, help="serve the admin service on this port only (default: the gRPC "
                                                  "port)")
    s.add_argument("--admin-host", help="listen address of --admin-port (default 127.0.0.1)")
    s.add_argument("--no-reflection", action="store_true", help="turn gRPC server reflection off")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="the log's level, every process's (default: server.log_level, info)")
    s.add_argument("--log-format", choices=["text", "json"],
                   help="json: one object a line, for a log pipeline (default: server.log_format, text)")
    s.set_defaults(fn=cmd_serve)

    sim = client_cmd("simulate", "drive a running server with synthetic traffic; report reward and regret")
    sim.add_argument("--policy", default="demo", help='the policy to drive (default %(default)s)')
    sim.add_argument("--events", type=positive_int, default=20_000,
                     help='decisions to make, one reward each (default %(default)s)')
    sim.add_argument("--report-every", type=positive_int, default=1000,
                     help='print a row every this many events (default %(default)s)')
    sim.add_argument("--segments", type=positive_int, default=6,
                     help='decide: user segments of the synthetic world (default %(default)s)')
    sim.add_argument("--seed", type=int, default=1, help="the synthetic world's random seed (default %(default)s)")
    sim.add_argument("--plot", help="write a PNG of regret and reward over time")
    sim.add_argument("--mode", choices=["decide", "retrieval", "search"], default="decide",
                     help="decide: the demo policy's contexts; retrieval: the music world's queries via Retrieve; "
                          "search: the same queries via Search, users clicking by position and relevance")
    sim.add_argument("--eta", type=positive_float, default=1.0,
                     help="search: the simulated users examine position k with probability 1/k^ETA "
                          "(default %(default)s)")
    sim.add_argument("--models", help="search: trained rankers (comma-separated names) to compare as baselines, "
                                      "each ordering the every-strategy union by its live version")
    sim.add_argument("--items", type=int, default=100_000, help="retrieval: the server's demo_items")
    sim.add_argument("--world-seed", type=int, default=42, help="retrieval: the server's demo_seed")
    sim.add_argument("--ladders", help='retrieval: budget ladders, "lexical=0,10,50,200 memory=0,10,50 ..."')
    sim.add_argument("--cost", type=float, default=0.0002, help="retrieval: the server's cost_per_candidate")
    sim.set_defaults(fn=cmd_simulate)

    ing = sub.add_parser("ingest", help="load items into the catalog and its indexes (offline)")
    ing.add_argument("what", choices=["catalog"], help='what to ingest: the catalog')
    ing.add_argument("file", type=input_file,
                     help="JSONL: one item per line (id, title, text fields, popularity, created_at, "
                                  "embedding)")
    _database_flags(ing)
    ing.add_argument("--data-dir", help="index directory (default: the configuration's retrieval.data_dir)")
    ing.add_argument("--strict", action="store_true", help="ingest nothing if any line is bad")
    ing.set_defaults(fn=cmd_ingest)

    tr = sub.add_parser("train", help="train a model offline and register it as a new version")
    tr.add_argument("what", choices=["xmr", "autocomplete", "ranker"],
                    help="the model kind to train (ranker: LambdaMART from the policy's logged Search pages)")
    tr.add_argument("--name", default="xmr", help="model name in the registry")
    src = tr.add_mutually_exclusive_group()
    src.add_argument("--pairs", type=input_file,
                     help='JSONL of {"query": ..., "item_id": ...} (default: engagements in the log)')
    src.add_argument("--demo-pairs", type=positive_int, help="xmr: this many pairs from the demo music world")
    src.add_argument("--sessions", type=input_file,
                     help='autocomplete: JSONL of {"queries": [...]} per session, oldest first')
    src.add_argument("--demo-sessions", type=positive_int, default=30_000,
                     help="autocomplete: this many sessions from the demo music world (the default)")
    tr.add_argument("--items", type=positive_int, default=100_000, help="demo pairs: the demo catalog's size")
    tr.add_argument("--world-seed", type=int, default=42,
                    help="demo pairs and sessions: the demo world's seed (default %(default)s)")
    tr.add_argument("--seed", type=int, default=0, help="demo pairs and sessions: which to generate")
    _database_flags(tr)
    tr.add_argument("--beam-size", type=positive_int, default=10,
                    help='xmr: beam width of the label-tree search when predicting (default %(default)s)')
    tr.add_argument("--threshold", type=float, default=0.1, help="weight-pruning threshold")
    tr.add_argument("--nr-splits", type=positive_int, default=16, help="label-tree branching factor")
    tr.add_argument("--max-leaf-size", type=positive_int, default=100,
                    help='xmr: labels per leaf of the label tree (default %(default)s)')
    tr.add_argument("--congruent", type=float, default=0.0, metavar="WEIGHT",
                    help="xmr: positive-congruent training, distilling the live version's top 10 on the pairs it "
                         "gets right at this weight (1 is a good start; 0: plain training); lowers the flip rate")
    tr.add_argument("--heldout-share", type=float, default=0.1,
                    help="xmr: the share of pairs in the model's evaluation set (the same pairs for every version)")
    tr.add_argument("--index", choices=["kmeans", "trie", "hybrid"], default="hybrid", help="autocomplete label index")
    tr.add_argument("--trie-depth", type=positive_int, default=3,
                    help="autocomplete, hybrid: trie levels above the clusters")
    tr.add_argument("--cluster-size", type=positive_int, default=32, help="autocomplete: labels per cluster")
    tr.add_argument("--prefixes-per-query", type=positive_int, default=8,
                    help="autocomplete: typed prefixes (of lengths 1-8) each past query is learned at; fewer "
                         "trains faster (1: about 7 min for a million past queries)")
    tr.add_argument("--policy", default="retrieval", help="ranker: the retrieval policy whose pages to learn from")
    tr.add_argument("--since", type=time_arg, help="ranker: only pages logged since then (7d, 12h, a date)")
    tr.add_argument("--trees", type=positive_int, default=200, help="ranker: boosting rounds (default %(default)s)")
    tr.add_argument("--learning-rate", type=positive_float, default=0.05,
                    help="ranker: the boosting learning rate (default %(default)s)")
    tr.add_argument("--num-leaves", type=positive_int, default=31, help="ranker: leaves per tree (default %(default)s)")
    tr.add_argument("--min-data-in-leaf", type=positive_int, default=50,
                    help="ranker: fewest rows in a leaf (default %(default)s)")
    tr.add_argument("--no-debias", action="store_true",
                    help="ranker: train on the raw clicks, without learning the position bias (a baseline)")
    tr.set_defaults(fn=lambda a: {"xmr": cmd_train_xmr, "autocomplete": cmd_train_autocomplete,
                                  "ranker": cmd_train_ranker}[a.what](a))

    rg = sub.add_parser("register", help="register a model folder trained elsewhere (PECOS's own tools) as a new "
                                          "version, after checking that it loads")
    rg.add_argument("what", choices=["xmr", "autocomplete", "ranker"], help='the model kind of the folder')
    rg.add_argument("folder", help="xmr: vectorizer/, xlinear/ and labels.json (item ids in label order)")
    rg.add_argument("--name", required=True, help="model name in the registry")
    _database_flags(rg)
    rg.set_defaults(fn=cmd_register)

    ks = sub.add_parser("keys", help="API keys: create (printed once), list, revoke; on the database of --config/--db, "
                                     "or through a server with --target")
    ks.add_argument("action", choices=["create", "list", "revoke"],
                    help='create (the key is printed once), list, or revoke ID')
    ks.add_argument("id", nargs="?", help="revoke: the key's id")
    ks.add_argument("--tenant", help="create: the key's tenant (default: default, or through a server the "
                                     "caller's)")
    ks.add_argument("--role", action="append", default=[], choices=["decide", "feedback", "admin"],
                    help="create: a role the key holds, repeatable")
    ks.add_argument("--name", default="", help="create: what the key is for (shown in lists and the audit trail)")
    ks.add_argument("--subject", default="", help="create: a client certificate subject or common name that acts "
                                                  "as this key (mutual TLS)")
    ks.add_argument("--decisions-per-second", type=non_negative_int, default=0,
                    help="create: quota (0: limits.key_* default)")
    ks.add_argument("--rewards-per-second", type=non_negative_int, default=0,
                    help="create: quota (0: limits.key_* default)")
    ks.add_argument("--max-streams", type=non_negative_int, default=0, help="create: quota (0: limits.key_* default)")
    _local_or_remote_flags(ks)
    ks.set_defaults(fn=cmd_keys)

    au = sub.add_parser("audit", help="admin changes (policies, promotions, keys): who, when, before and after")
    au.add_argument("--since", type=time_arg, help="changes since (ISO 8601, or a duration ago: 24h, 7d)")
    au.add_argument("--limit", type=positive_int, default=1000, help="the newest this many (default %(default)s)")
    au.add_argument("--tenant", help="on the database: only this tenant's (through a server: the caller's)")
    _local_or_remote_flags(au)
    au.set_defaults(fn=cmd_audit)

    dbp = sub.add_parser("db", help="the database: prune policies' logs by their retention_days, or back it up "
                                    "(SQLite; PostgreSQL: pg_dump)")
    dbp.add_argument("action", choices=["prune", "backup"],
                     help='prune: remove old events now; backup: copy the database to OUT')
    dbp.add_argument("out", nargs="?", help="backup: the file to write (must not exist)")
    dbp.add_argument("--policy", help="prune: only this policy (default: every policy with a retention_days)")
    dbp.add_argument("--older-than-days", type=positive_float,
                     help="prune: events older than this many days (default: each policy's retention_days)")
    _database_flags(dbp)
    dbp.set_defaults(fn=cmd_db)


EVAL_KINDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "xmr": cmd_eval_xmr, "autocomplete": cmd_eval_autocomplete,
}
