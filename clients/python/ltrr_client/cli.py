"""The ``ltrr`` command: serve, decide, reward, stream-rewards, simulate, policies."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from ltrr.v1 import feedback_pb2
from ltrr_client.client import ChannelTls, LtrrClient, reward_event
from ltrr_client.evaluation import TARGET_HELP

# The server commands call unless told --target (or --server): $LTRR_TARGET, else the local default.
DEFAULT_TARGET = os.environ.get("LTRR_TARGET", "localhost:50051")


def context_arg(text: str) -> dict[str, dict[str, Any]]:
    """``--context``: JSON of ``{"namespace": {"feature": value}}`` (a string value is a category, a
    number a weight), or a one-line usage error.

    >>> context_arg('{"user": {"segment": "s1", "age": 31}}')
    {'user': {'segment': 's1', 'age': 31}}
    >>> context_arg('{"user": "s1"}')
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected {"namespace": {"feature": value}}; namespace 'user' holds 'str', not an object
    """
    shape = 'expected {"namespace": {"feature": value}}'
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); {shape}") from exc
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{shape}, got {type(data).__name__}")
    for ns, feats in data.items():
        if not isinstance(feats, dict):
            raise argparse.ArgumentTypeError(f"{shape}; namespace {ns!r} holds {type(feats).__name__!r}, not an object")
        for name, value in feats.items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise argparse.ArgumentTypeError(f"{shape}; {ns}.{name} is {type(value).__name__!r}: a value is a "
                                                 "string (a category) or a number (a weight)")
    return data


def plan_arg(text: str) -> dict[str, int]:
    """``--plan``: ``strategy=budget,...``, or a one-line usage error.

    >>> plan_arg("lexical=10,vector=50")
    {'lexical': 10, 'vector': 50}
    >>> plan_arg("explore")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'explore' is not strategy=budget (lexical=10,vector=50)
    """
    plan = {}
    for part in text.split(","):
        name, sep, budget = part.partition("=")
        if not sep or not name or not budget.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{part!r} is not strategy=budget (lexical=10,vector=50)")
        plan[name.strip()] = int(budget)
    return plan


def _whole(text: str, least: int, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"{n} is not {what}")
    return n


def positive_int(text: str) -> int:
    """A count of at least 1, or a one-line usage error.

    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 0 is not a positive whole number
    """
    return _whole(text, 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    """A count of 0 or more (0 usually meaning "the default"), or a one-line usage error."""
    return _whole(text, 0, "0 or more")


def positive_float(text: str) -> float:
    """A positive, finite number, or a one-line usage error.

    >>> positive_float("1.5"), positive_float("30")
    (1.5, 30.0)
    """
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return x


def input_file(text: str) -> str:
    """A file to read ("-": standard input), or a one-line usage error when there is none."""
    if text != "-" and not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no file {text!r}")
    return text


def _client(args: argparse.Namespace) -> LtrrClient:
    """The client a command's --target (or --server) and --tls-* flags describe."""
    tls = ChannelTls(args.tls_ca or "", args.tls_cert or "", args.tls_key or "") \
        if args.tls_ca or args.tls_cert or args.tls_key else None
    return LtrrClient(getattr(args, "server", None) or args.target, tls=tls,
                      api_key=args.api_key or os.environ.get("LTRR_API_KEY", ""))


def _tls_flags(p: argparse.ArgumentParser) -> None:
    """How a command reaches a server securely: TLS and an API key."""
    p.add_argument("--tls-ca", help="TLS: the CA that signed the server's certificate (PEM)")
    p.add_argument("--tls-cert", help="mutual TLS: this client's certificate chain (PEM)")
    p.add_argument("--tls-key", help="mutual TLS: this client's key (PEM)")
    p.add_argument("--api-key", help="the API key to send (default: $LTRR_API_KEY); the server's auth = keys "
                                     "needs one")


def time_arg(text: str) -> str:
    """``--since``/``--until``: an ISO 8601 time or a duration ago (read when the command runs), or
    a one-line usage error."""
    from ltrr_client.evaluation import parse_time

    try:
        parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _log_range_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--since and --until: which logged decisions a command reads (``_time_range``)."""
    p.add_argument("--since", type=time_arg,
                   help=f"{prefix}decisions made since (ISO 8601, or a duration ago: 24h, 7d)")
    p.add_argument("--until", type=time_arg, help=f"{prefix}decisions made before (ISO 8601, or a duration ago)")


def _timeout_flag(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--timeout", type=float, default=3600.0, help=f"{prefix}seconds (default %(default)s)")


def json_all_the_way(obj: Any) -> Any:
    """A message's dict with every ``*_json`` string field decoded in place (named without the
    suffix), so that the output is JSON all the way down, never JSON inside a JSON string.

    >>> json_all_the_way({"name": "m", "metrics_json": '{"recall_at_10": 0.5}', "items": [{"x_json": "[1]"}]})
    {'name': 'm', 'metrics': {'recall_at_10': 0.5}, 'items': [{'x': [1]}]}
    """
    if isinstance(obj, list):
        return [json_all_the_way(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key.endswith("_json") and isinstance(value, str):
            try:
                out[key[:-len("_json")]] = json.loads(value) if value else None
                continue
            except json.JSONDecodeError:
                pass
        out[key] = json_all_the_way(value)
    return out


def _print(msg: object) -> None:
    data = MessageToDict(msg, preserving_proto_field_name=True)  # type: ignore[arg-type]
    print(json.dumps(json_all_the_way(data), indent=2))


def cmd_serve(args: argparse.Namespace) -> int:
    from ltrr_server.app import main as serve_main
    from ltrr_server.config import load_settings
    from ltrr_server.errors import InvalidArgument

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
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    context = args.context
    actions = args.actions.split(",") if args.actions else ()
    with _client(args) as c:
        _print(c.decide(args.policy, context, actions, event_id=args.event_id or "", slots=args.slots,
                        baseline=args.baseline))
    return 0


def cmd_reward(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.report_reward(args.event_id, args.value, args.reward_id, args.engaged.split(",") if args.engaged
                               else ()))
    return 0


def _read_rewards(path: str, bad: list[str]) -> Iterator[feedback_pb2.RewardEvent]:
    with (sys.stdin if path == "-" else open(path)) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                value = float(d.get("value", d.get("reward", 0.0)))
                if not math.isfinite(value):
                    raise ValueError(f"value is not finite: {value}")
                yield reward_event(str(d["event_id"]), value, str(d.get("reward_id", "")),
                                   [str(x) for x in d.get("engaged_item_ids", [])],
                                   d.get("oracle_best_value"), d.get("oracle_chosen_value"))
            except (ValueError, KeyError, TypeError) as exc:
                bad.append(f"{path}:{lineno}: {type(exc).__name__}: {exc}")


def _batched(it: Iterator[feedback_pb2.RewardEvent], n: int) -> Iterator[list[feedback_pb2.RewardEvent]]:
    batch: list[feedback_pb2.RewardEvent] = []
    for ev in it:
        batch.append(ev)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_stream_rewards(args: argparse.Namespace) -> int:
    bad: list[str] = []
    counts: Counter[str] = Counter()
    with _client(args) as c:
        for ack_batch in c.stream_rewards(_batched(_read_rewards(args.file, bad), args.batch)):
            for ack in ack_batch.acks:
                counts[feedback_pb2.RewardStatus.Name(ack.status)] += 1
                if ack.status not in (feedback_pb2.REWARD_STATUS_ACCEPTED, feedback_pb2.REWARD_STATUS_DUPLICATE):
                    print(f"{ack.event_id}/{ack.reward_id}: {feedback_pb2.RewardStatus.Name(ack.status)} "
                          f"{ack.message}", file=sys.stderr)
    for line in bad:
        print(f"skipped {line}", file=sys.stderr)
    print(json.dumps({"acks": dict(counts), "unreadable_lines": len(bad)}))
    return 1 if bad else 0


def sr_ladders(text: str | None) -> dict[str, tuple[int, ...]] | None:
    from ltrr_client.simulate_retrieval import parse_ladders

    return parse_ladders(text) if text else None


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.mode == "retrieval":
        from ltrr_client import simulate_retrieval as sr

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
        from ltrr_client import simulate_search as ss

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


def cmd_retrieve(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.retrieve(args.policy, args.query, args.context, fixed_plan=args.plan, limit=args.limit))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.search(args.policy, args.query, args.context, user_id=args.user or "", page_size=args.page_size,
                        fixed_plan=args.plan, order=args.order))
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

    try:
        settings = load_settings(args.config, db_url=args.db)
        params = LambdaMartParams(trees=args.trees, learning_rate=args.learning_rate, num_leaves=args.num_leaves,
                                  min_data_in_leaf=args.min_data_in_leaf, debias=not args.no_debias,
                                  seed=args.seed or 1)
        registry = _registry(settings)
        bar = tqdm(total=params.trees, desc="reading pages", file=sys.stderr, mininterval=1.0)

        def progress(stage: str, done: int, total: int) -> None:
            bar.set_description(f"{stage} ({done:,})" if not total else stage)
            if total:
                bar.update(done - bar.n)

        from ltrr_client.evaluation import parse_time

        version, metrics = train_ranker(registry, args.name, args.policy, params,
                                        since=parse_time(args.since) / 1000.0 if args.since else 0.0,
                                        progress=progress)
        bar.close()
    except (LtrrError, OSError, ValueError) as exc:
        print(f"ltrr train: {exc}", file=sys.stderr)
        return 2
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


def cmd_complete(args: argparse.Namespace) -> int:
    from ltrr.v1 import models_pb2

    with _client(args) as c:
        _print(c.models.Autocomplete(models_pb2.AutocompleteRequest(
            model=args.model, prefix=args.prefix, previous_queries=args.previous or [], session_id=args.session or "",
            k=args.k)))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ltrr.v1 import models_pb2

    with _client(args) as c:
        if args.action == "list":
            _print(c.models.ListModels(models_pb2.ListModelsRequest(name=args.name or "")))
        elif args.action == "promote":
            if not args.name or not args.version:
                print("ltrr models promote NAME VERSION [--force]", file=sys.stderr)
                return 2
            _print(c.models.PromoteModel(models_pb2.PromoteModelRequest(name=args.name, version=args.version,
                                                                         force=args.force)))
    return 0


def cmd_xmr(args: argparse.Namespace) -> int:
    from ltrr.v1 import models_pb2

    with _client(args) as c:
        _print(c.models.XmrPredict(models_pb2.XmrPredictRequest(model=args.model, queries=args.queries, k=args.k)))
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.action == "list":
            for p in c.list_policies():
                _print(p)
        elif args.action == "get":
            _print(c.get_policy(args.name))
        elif args.action == "stats":
            _print(c.stats(args.name))
        elif args.action == "snapshot":
            _print(c.snapshot(args.name))
    return 0


class _ProgressLine:
    """A progress line on stderr (when it is a terminal, rewritten in place; else one line a 10%)."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.tty = sys.stderr.isatty()
        self.last_tenth = -1
        self.calls = 0
        self.started = time.monotonic()

    def show(self, done: int, total: int) -> None:
        """``total`` 0: not known (the line then says how many so far, every tenth call off a terminal)."""
        seconds = time.monotonic() - self.started
        if total:
            share = done / total
            text = f"{self.verb} {done:,}/{total:,} events ({share:.0%}, {seconds:.0f}s)"
            tenth = int(share * 10)
        else:
            text = f"{self.verb} {done:,} events ({seconds:.0f}s)"
            self.calls += 1
            tenth = self.calls // 10
        if self.tty:
            print("\r" + text, end="", file=sys.stderr, flush=True)
        elif tenth > self.last_tenth:
            self.last_tenth = tenth
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _time_range(args: argparse.Namespace) -> dict[str, int]:
    from ltrr_client.evaluation import parse_time

    return {"since_ms": parse_time(args.since) if args.since else 0,
            "until_ms": parse_time(args.until) if args.until else 0}


def _streamed(updates: Iterator[Any], verb: str, quiet: bool) -> Any:
    """Shows a streamed job's progress; returns its result."""
    line = None if quiet else _ProgressLine(verb)
    try:
        for update in updates:
            if line is not None:
                line.show(update.events_done, update.events_total)
            if update.HasField("result"):
                return update.result
    finally:
        if line is not None:
            line.close()
    raise RuntimeError("the server ended the stream without a result")


def cmd_eval_policy(args: argparse.Namespace) -> int:
    """Counterfactual estimates of targets from a policy's logged decisions (EvaluatePolicy)."""
    from ltrr.v1 import admin_pb2
    from ltrr_client.evaluation import evaluation_table, parse_target

    if not args.policy_name:
        print("ltrr eval policy: name the policy: ltrr eval policy NAME", file=sys.stderr)
        return 2
    with _client(args) as c:
        try:
            base = c.get_policy(args.policy_name).spec if any(t.startswith("candidate:") for t in args.target) \
                else None
            request = admin_pb2.EvaluatePolicyRequest(
                name=args.policy_name, targets=[parse_target(t, base) for t in args.target], **_time_range(args),
                estimators=[admin_pb2.Estimator.Value(f"ESTIMATOR_{e.strip().upper()}")
                            for e in filter(None, (args.estimators or "").split(","))])
        except ValueError as exc:
            print(f"ltrr eval policy: {exc}", file=sys.stderr)
            return 2
        result = _streamed(c.admin.EvaluatePolicy(request, timeout=args.timeout), "evaluated", args.json)
    if args.json:
        _print(result)
    else:
        print(evaluation_table(result))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Candidate configurations replayed over the log (TunePolicy); ``--every`` repeats it."""
    from ltrr.v1 import admin_pb2
    from ltrr_client.evaluation import parse_candidate, parse_duration, tune_table

    with _client(args) as c:
        while True:
            try:
                base = c.get_policy(args.name).spec
                candidates = [parse_candidate(text, base) for text in args.candidate]
                request = admin_pb2.TunePolicyRequest(name=args.name, candidates=candidates, apply=args.apply,
                                                      **_time_range(args))
                every = parse_duration(args.every) if args.every else 0.0
                if every is None:
                    raise ValueError(f"--every needs a duration such as 24h, got {args.every!r}")
            except ValueError as exc:
                print(f"ltrr tune: {exc}", file=sys.stderr)
                return 2
            result = _streamed(c.admin.TunePolicy(request, timeout=args.timeout), "replayed", args.json)
            if args.json:
                _print(result)
            else:
                print(tune_table(result), flush=True)
            if not every:
                return 0
            time.sleep(every)


def cmd_export(args: argparse.Namespace) -> int:
    """A policy's joined decisions as DSJSON lines (ExportEvents), to a file or stdout."""
    from ltrr.v1 import admin_pb2

    request = admin_pb2.ExportEventsRequest(name=args.name, **_time_range(args))  # times checked by time_arg
    out = open(args.output, "w", encoding="utf-8") if args.output and args.output != "-" else sys.stdout
    line = _ProgressLine("exported")
    try:
        with _client(args) as c:
            for chunk in c.admin.ExportEvents(request, timeout=args.timeout):
                for text in chunk.lines:
                    out.write(text + "\n")
                line.show(chunk.events_done, chunk.events_total)
    finally:
        line.close()
        if out is not sys.stdout:
            out.close()
    return 0


def _import_batches(path: str, size: int) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of a DSJSON file, skipping blank lines."""
    batch: list[str] = []
    first = 1
    with open(path, encoding="utf-8") if path != "-" else sys.stdin as f:
        for number, text in enumerate(f, 1):
            if not batch:
                first = number
            batch.append(text.rstrip("\n"))
            if len(batch) >= size:
                yield first, batch
                batch = []
    if batch:
        yield first, batch


def cmd_import(args: argparse.Namespace) -> int:
    """DSJSON lines into a policy's log (ImportEvents); bad lines reported by number and skipped,
    or with --strict, checked first and nothing imported if any is bad."""
    from ltrr.v1 import admin_pb2

    def send(validate_only: bool) -> tuple[int, int, int]:
        imported = duplicates = bad = 0
        batches = (admin_pb2.ImportBatch(policy=args.policy, lines=lines, first_line=first, validate_only=validate_only)
                   for first, lines in _import_batches(args.file, args.batch))
        line = _ProgressLine("checked" if validate_only else "imported")
        try:
            for result in c.admin.ImportEvents(batches, timeout=args.timeout):
                imported, duplicates, bad = imported + result.imported, duplicates + result.duplicates, \
                    bad + len(result.errors)
                for error in result.errors:
                    print(f"ltrr import: line {error.line}: {error.message}", file=sys.stderr)
                line.show(imported + duplicates + bad, 0)
        finally:
            line.close()
        return imported, duplicates, bad

    with _client(args) as c:
        if args.strict:
            _, _, bad = send(True)
            if bad:
                print(f"ltrr import: {bad} bad lines: nothing imported (--strict)", file=sys.stderr)
                return 1
        imported, duplicates, bad = send(False)
    print(json.dumps({"imported": imported, "duplicates": duplicates, "skipped": bad}))
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ltrr")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrr", description="ltrr: learning-to-rank-and-retrieve server and client")
    p.add_argument("--version", action="version", version=f"ltrr {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

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

    def client_cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--target", default=DEFAULT_TARGET,
                       help="server address (default: $LTRR_TARGET, else localhost:50051; now %(default)s)")
        _tls_flags(c)
        return c

    d = client_cmd("decide", "ask a policy for a decision")
    d.add_argument("--policy", default="demo", help='the policy that decides (default %(default)s)')
    d.add_argument("--context", type=context_arg, help='JSON: {"namespace": {"feature": value}}')
    d.add_argument("--actions", help="comma-separated action ids (default: the policy's)")
    d.add_argument("--event-id", help='your own id for the decision (default: one the server makes); rewards name it')
    d.add_argument("--slots", type=non_negative_int, default=0,
                   help="ccb policies: slots to fill (0: the policy's own number)")
    d.add_argument("--baseline", default="", help="your own choice: an apprentice policy serves it and learns")
    d.set_defaults(fn=cmd_decide)

    r = client_cmd("reward", "report one reward")
    r.add_argument("event_id", help='the event id Decide answered')
    r.add_argument("value", type=float, help='the reward, a number within +-1e6 (clicks: 1 or 0)')
    r.add_argument("--reward-id", default="",
                   help='an id of this reward, so a resent one counts once (default: one per event)')
    r.add_argument("--engaged", help="comma-separated engaged item ids")
    r.set_defaults(fn=cmd_reward)

    sr = client_cmd("stream-rewards", "stream rewards from a JSONL file ({event_id, value, reward_id?})")
    sr.add_argument("file", type=input_file, help="JSONL file, or - for stdin")
    sr.add_argument("--batch", type=positive_int, default=500, help='events per streamed batch (default %(default)s)')
    sr.set_defaults(fn=cmd_stream_rewards)

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

    rq = client_cmd("retrieve", "candidates for a query from a retrieval policy")
    rq.add_argument("query", help='the query text')
    rq.add_argument("--policy", default="retrieval", help='the retrieval policy that plans (default %(default)s)')
    rq.add_argument("--context", type=context_arg, help='JSON: {"namespace": {"feature": value}}')
    rq.add_argument("--plan", type=plan_arg, help="a fixed plan instead of the policy's: lexical=10,vector=50")
    rq.add_argument("--limit", type=positive_int, default=10, help='candidates to print (default %(default)s)')
    rq.set_defaults(fn=cmd_retrieve)

    se = client_cmd("search", "the ranked page for a query: the policy's plan retrieves, the ranker orders")
    se.add_argument("query", help='the query text')
    se.add_argument("--policy", default="retrieval", help='the retrieval policy that plans (default %(default)s)')
    se.add_argument("--context", type=context_arg, help='JSON: {"namespace": {"feature": value}}')
    se.add_argument("--user", help="the user's id (the ranker uses their recent engagement)")
    se.add_argument("--page-size", type=positive_int, default=10, help='results on the page (default %(default)s)')
    se.add_argument("--plan", type=plan_arg, help="a fixed plan instead of the policy's: lexical=10,vector=50")
    se.add_argument("--order", choices=["ranker", "fusion", "popularity"], default="ranker",
                    help="who orders the page: the learned ranker (default), or a baseline (not learned)")
    se.set_defaults(fn=cmd_search)

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

    co = client_cmd("complete", "autocompletions of a prefix")
    co.add_argument("prefix", help='the typed prefix')
    co.add_argument("--previous", nargs="*", help="the session's earlier queries")
    co.add_argument("--session", help="a session id the server keeps queries for")
    co.add_argument("--model", default="autocomplete", help='the autocompletion model (default %(default)s)')
    co.add_argument("--k", type=positive_int, default=10, help='completions to return (default %(default)s)')
    co.set_defaults(fn=cmd_complete)

    ev = sub.add_parser("eval", help="policy: counterfactual estimates from a running server's log (IPS, SNIPS, DR); "
                                     "xmr: a version against lexical and vector on its held-out pairs; "
                                     "autocomplete: every label index and most-popular on held-out sessions")
    ev.add_argument("what", choices=["policy", "xmr", "autocomplete"], help='what to evaluate')
    ev.add_argument("policy_name", nargs="?", help="policy: the policy whose log is evaluated")
    ev.add_argument("--target", action="append", default=[], help="policy, repeatable (default: live and "
                                                                   "uniform): " + TARGET_HELP)
    _log_range_flags(ev, "policy: ")
    ev.add_argument("--estimators", help="policy: comma-separated among ips,snips,dr (default: all)")
    ev.add_argument("--server", default=DEFAULT_TARGET, help="policy: server address (default %(default)s)")
    _tls_flags(ev)
    _timeout_flag(ev, "policy: ")
    ev.add_argument("--sessions", type=input_file,
                    help='autocomplete: JSONL of {"queries": [...]} (the last tenth is held out)')
    ev.add_argument("--demo-sessions", type=positive_int, default=30_000,
                    help='autocomplete: demo sessions to train and hold out from (default %(default)s)')
    ev.add_argument("--items", type=positive_int, default=100_000,
                    help="xmr, autocomplete: the demo catalog's size (default %(default)s)")
    ev.add_argument("--world-seed", type=int, default=42,
                    help="xmr, autocomplete: the demo world's seed (default %(default)s)")
    ev.add_argument("--seed", type=int, default=1, help='autocomplete: which demo sessions (default %(default)s)')
    ev.add_argument("--json", nargs="?", const="-", help="autocomplete: also write the table as JSON to this file; "
                                                       "policy: print the result as JSON instead of a table")
    ev.add_argument("--name", default="xmr", help='xmr: the model name in the registry (default %(default)s)')
    ev.add_argument("--version", type=non_negative_int, default=0, help="0: the live version")
    _database_flags(ev, "xmr, autocomplete: ")
    ev.add_argument("--data-dir", help="the catalog's index directory (for lexical and vector)")
    ev.add_argument("--limit", type=positive_int, default=5000, help="at most this many held-out pairs (or sessions)")
    ev.set_defaults(fn=lambda a: {"policy": cmd_eval_policy, "xmr": cmd_eval_xmr,
                                  "autocomplete": cmd_eval_autocomplete}[a.what](a))

    tu = sub.add_parser("tune", help="replay candidate learning configurations over a policy's log, estimate each; "
                                     "--apply switches to the best when its lower bound beats the live policy")
    tu.add_argument("name", help='the policy whose log is replayed')
    tu.add_argument("--candidate", action="append", default=[],
                    help="FIELD=VALUE,... changes to the policy's spec, repeatable (default: a grid around it)")
    tu.add_argument("--apply", action="store_true",
                    help="switch the policy to the best candidate (a new lineage, warm-started) when its lower "
                         "bound beats the live policy's estimate")
    _log_range_flags(tu)
    tu.add_argument("--every", help="run again after this long (24h), until stopped")
    tu.add_argument("--json", action="store_true", help="print the result as JSON")
    tu.add_argument("--server", default=DEFAULT_TARGET, help="server address (default %(default)s)")
    _tls_flags(tu)
    _timeout_flag(tu)
    tu.set_defaults(fn=cmd_tune)

    md = client_cmd("models", "list models, or promote a version (checked against the live one)")
    md.add_argument("action", choices=["list", "promote"], help='list the models, or promote NAME VERSION')
    md.add_argument("name", nargs="?", help='the model name (list: only this one)')
    md.add_argument("version", nargs="?", type=non_negative_int, default=0, help='promote: the version to make live')
    md.add_argument("--force", action="store_true", help="promote past the negative-flip-rate bound")
    md.set_defaults(fn=cmd_models)

    xq = client_cmd("xmr", "XR-Linear labels for query texts")
    xq.add_argument("queries", nargs="+", help='query texts, one result list each')
    xq.add_argument("--model", default="xmr", help='the XR-Linear model (default %(default)s)')
    xq.add_argument("--k", type=positive_int, default=10, help='labels per query (default %(default)s)')
    xq.set_defaults(fn=cmd_xmr)

    exp = client_cmd("export", "a policy's joined decisions as VW decision-service JSON (DSJSON) lines")
    exp.add_argument("what", choices=["dsjson"], help='the format: DSJSON')
    exp.add_argument("name", help='the policy whose log is exported')
    _log_range_flags(exp)
    exp.add_argument("--output", "-o", help="file to write (default: stdout)")
    _timeout_flag(exp)
    exp.set_defaults(fn=cmd_export)

    imp = client_cmd("import", "DSJSON lines (VW, rlclientlib, Personalizer, ltrr export) into a policy's log: "
                               "joined, learned, and there to evaluate or tune")
    imp.add_argument("what", choices=["dsjson"], help='the format: DSJSON')
    imp.add_argument("file", type=input_file, help="one decision per line, or - for stdin")
    imp.add_argument("--policy", required=True, help='the policy whose log receives the lines')
    imp.add_argument("--strict", action="store_true", help="check every line first; import nothing if one is bad")
    imp.add_argument("--batch", type=positive_int, default=1000,
                     help="lines per batch (each committed before the next)")
    _timeout_flag(imp)
    imp.set_defaults(fn=cmd_import)

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

    pol = client_cmd("policies", "list, describe, snapshot or show statistics of policies")
    pol.add_argument("action", choices=["list", "get", "stats", "snapshot"],
                     help='list every policy; get, stats or snapshot one')
    pol.add_argument("name", nargs="?", default="demo", help='the policy (default %(default)s)')
    pol.set_defaults(fn=cmd_policies)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import grpc

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage error (2), or --help and --version (0): a code, not an exit
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.fn(args))
    except grpc.RpcError as exc:
        print(f"ltrr {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (| head): nothing more to say, and no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
