"""The ``ltrr`` command: the commands that call a server (decide, reward, stream-rewards, retrieve,
search, complete, models, xmr, policies, eval policy, tune, export, import).

Installed with the server package, ``ltrr`` also has its in-process commands (serve, ingest, train,
register, eval xmr/autocomplete, keys, audit, db, simulate): the server registers them as entry
points (``ltrr.commands``), so this package never imports the server."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import IO, Any

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
    # Every field, zero values too: a script reading the output finds the same keys every time
    # (protobuf's JSON leaves out a score of exactly 0, an empty error, a false flag).
    data = MessageToDict(msg, preserving_proto_field_name=True,  # type: ignore[arg-type]
                         always_print_fields_with_no_presence=True)
    print(json.dumps(json_all_the_way(data), indent=2))


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


def _lines_of(f: IO[bytes]) -> Iterator[tuple[int, str | None, str, int]]:
    """(line number, text, problem, size) per line of a UTF-8 file, as tools write them: a byte
    order mark before line 1 (Windows tools write one) and line ends (LF or CRLF) dropped; text
    None for a blank line (problem '') and for one that is not UTF-8 (problem says where); size
    in bytes as read, what a request carrying it weighs. A tuple: one is made per line."""
    for number, raw in enumerate(f, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            yield number, None, "", 0
            continue
        raw = raw.rstrip(b"\r\n")
        try:
            yield number, raw.decode("utf-8"), "", len(raw)
        except UnicodeDecodeError as exc:
            yield number, None, f"line: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})", 0


def _read_rewards(path: str, bad: list[str]) -> Iterator[feedback_pb2.RewardEvent]:
    """The reward events of a JSONL file; a line that is not one is named in ``bad`` and skipped
    (until 2026-12-01, a line not UTF-8 or not a JSON object ended the whole stream)."""
    with (sys.stdin.buffer if path == "-" else open(path, "rb")) as f:
        for lineno, line, problem, _ in _lines_of(f):
            if line is None:
                if problem:
                    bad.append(f"{path}:{lineno}: {problem}")
                continue
            try:
                parsed = json.loads(line)
                if not isinstance(parsed, dict):
                    raise TypeError(f"a JSON object is needed, got {type(parsed).__name__}")
                d: Any = parsed
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


def cmd_retrieve(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.retrieve(args.policy, args.query, args.context, fixed_plan=args.plan, limit=args.limit))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.search(args.policy, args.query, args.context, user_id=args.user or "", page_size=args.page_size,
                        fixed_plan=args.plan, order=args.order))
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
        elif args.action == "update":
            from ltrr.v1 import admin_pb2
            from ltrr_client.spec_text import set_field

            spec = admin_pb2.PolicySpec(name=args.name)
            try:
                named = [set_field(spec, part) for part in args.changes]
            except ValueError as exc:
                print(f"ltrr policies update: {exc}", file=sys.stderr)
                return 2
            if not named:
                print("ltrr policies update NAME FIELD=VALUE ... (mode=online, description=..., actions=a+b+c)",
                      file=sys.stderr)
                return 2
            changed = c.update_policy(spec, update_mask=named)
            _print(changed.policy)
            print("model reset: a learning setting changed, a new lineage starts from scratch" if changed.model_reset
                  else "model kept: the change applies live", file=sys.stderr)
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
    from ltrr_client.evaluation import evaluation_table, parse_target, target_name

    if not args.policy_name:
        print("ltrr eval policy: name the policy: ltrr eval policy NAME", file=sys.stderr)
        return 2
    with _client(args) as c:
        try:
            base = c.get_policy(args.policy_name).spec if any(t.startswith("candidate:") for t in args.target) \
                else None
            request = admin_pb2.EvaluatePolicyRequest(
                name=args.policy_name, targets=[parse_target(t, base) for t in args.target], **_time_range(args),
                baseline=target_name(args.baseline) if args.baseline else "",
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


# With --every, a run that fails for one of these reasons ends the schedule (trying again would
# fail the same way); any other failure (the server restarting, busy, a range with no joined
# decisions yet) is reported and the schedule goes on, trying again within a minute.
_TUNE_FATAL = frozenset({"INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED"})
TUNE_RETRY_SECONDS = 60.0


def cmd_tune(args: argparse.Namespace) -> int:
    """Candidate configurations replayed over the log (TunePolicy); ``--every`` repeats it."""
    import grpc

    from ltrr.v1 import admin_pb2
    from ltrr_client.evaluation import parse_candidate, parse_duration, tune_table

    every = parse_duration(args.every) if args.every else 0.0
    if every is None:
        print(f"ltrr tune: --every needs a duration such as 24h, got {args.every!r}", file=sys.stderr)
        return 2
    with _client(args) as c:
        while True:
            try:
                base = c.get_policy(args.name).spec
                candidates = [parse_candidate(text, base) for text in args.candidate]
                request = admin_pb2.TunePolicyRequest(name=args.name, candidates=candidates, apply=args.apply,
                                                      **_time_range(args))
                result = _streamed(c.admin.TunePolicy(request, timeout=args.timeout), "replayed", args.json)
            except ValueError as exc:
                print(f"ltrr tune: {exc}", file=sys.stderr)
                return 2
            except grpc.RpcError as exc:
                if not every or exc.code().name in _TUNE_FATAL:
                    raise
                wait = min(every, TUNE_RETRY_SECONDS)
                print(f"ltrr tune: this run failed, {exc.code().name}: {exc.details()}; trying again in "
                      f"{wait:g} s", file=sys.stderr, flush=True)
                time.sleep(wait)
                continue
            if args.json:
                _print(result)
            else:
                print(tune_table(result))
            sys.stdout.flush()  # a schedule's reader (a log, a pipe) sees each run as it ends
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


# ImportBatch.lines: at most this many characters a line (protos/ltrr/v1/admin.proto). A longer
# line is reported and skipped here, unsent: the server would skip it too, and a line of over
# 4 MiB would pass the request limit, which ends the stream.
DSJSON_LINE_CHARS = 1_000_000
# Bytes of lines per batch: a batch is one request, and the server refuses a request over its
# limits.max_request_bytes (4 MiB by default). Personalizer's lines carry a few KB each, so 1,000
# of them (--batch's default) can be more than that: 1,200 lines of 5.6 KB ended a whole import
# with RESOURCE_EXHAUSTED before this bound.
IMPORT_BATCH_BYTES = 1 << 20


class _ImportFile:
    """A DSJSON file's lines, numbered as in the file, read once per pass (``--strict`` reads it
    twice, so there standard input is kept, in memory up to 64 MiB and on disk past it).

    Blank lines are passed over and a byte order mark at the start dropped (Windows tools write
    one). A line that cannot be sent (not UTF-8, or longer than ``DSJSON_LINE_CHARS``) is named
    on stderr and counted in ``bad``, as the server's answers count the lines it skips.
    """

    def __init__(self, path: str, twice: bool) -> None:
        self._path = path
        self._kept: IO[bytes] | None = None
        if path == "-" and twice:
            self._kept = tempfile.SpooledTemporaryFile(max_size=64 << 20)
            shutil.copyfileobj(sys.stdin.buffer, self._kept)
        self.bad = 0

    def lines(self) -> Iterator[tuple[int, str | None, int]]:
        """(line number, text, size in bytes) per line to send; text None where the file cannot be
        sent on as it is (already reported): a batch ends there, so its lines stay consecutive."""
        self.bad = 0
        if self._kept is not None:
            self._kept.seek(0)
            yield from self._read(self._kept)
            return
        if self._path == "-":
            yield from self._read(sys.stdin.buffer)
            return
        with open(self._path, "rb") as f:
            yield from self._read(f)

    def _read(self, f: IO[bytes]) -> Iterator[tuple[int, str | None, int]]:
        for number, text, problem, size in _lines_of(f):
            if text is not None and len(text) > DSJSON_LINE_CHARS:
                problem, text = (f"line: {len(text):,} characters, more than the {DSJSON_LINE_CHARS:,} a line may "
                                 "have"), None
            if problem:
                self._skip(number, problem)
            yield number, text, size

    def _skip(self, number: int, why: str) -> None:
        self.bad += 1
        print(f"ltrr import: line {number}: {why}", file=sys.stderr)

    def batches(self, size_limit: int, max_bytes: int = IMPORT_BATCH_BYTES) -> Iterator[tuple[int, list[str]]]:
        """(first line number, consecutive lines), at most ``size_limit`` lines and, unless one line
        alone is more, ``max_bytes`` of them (weighed as read: until 2026-12-01 each line was
        encoded again to weigh it)."""
        batch: list[str] = []
        first = held = 0
        for number, text, size in self.lines():
            if batch and (text is None or len(batch) >= size_limit or held + size > max_bytes):
                yield first, batch
                batch, held = [], 0
            if text is None:
                continue
            if not batch:
                first = number
            batch.append(text)
            held += size
        if batch:
            yield first, batch


def cmd_import(args: argparse.Namespace) -> int:
    """DSJSON lines into a policy's log (ImportEvents); bad lines reported by number and skipped,
    or with --strict, checked first and nothing imported if any is bad."""
    from ltrr.v1 import admin_pb2

    source = _ImportFile(args.file, twice=args.strict)

    def send(validate_only: bool) -> tuple[int, int, int]:
        imported = duplicates = bad = 0
        batches = (admin_pb2.ImportBatch(policy=args.policy, lines=lines, first_line=first, validate_only=validate_only)
                   for first, lines in source.batches(args.batch))
        line = _ProgressLine("checked" if validate_only else "imported")
        try:
            for result in c.admin.ImportEvents(batches, timeout=args.timeout):
                imported, duplicates, bad = imported + result.imported, duplicates + result.duplicates, \
                    bad + len(result.errors)
                for error in result.errors:
                    print(f"ltrr import: line {error.line}: {error.message}", file=sys.stderr)
                line.show(imported + duplicates + bad + source.bad, 0)
        finally:
            line.close()
        return imported, duplicates, bad + source.bad

    with _client(args) as c:
        if args.strict:
            _, _, bad = send(True)
            if bad:
                print(f"ltrr import: {bad} bad lines: nothing imported (--strict)", file=sys.stderr)
                return 1
        imported, duplicates, bad = send(False)
    print(json.dumps({"imported": imported, "duplicates": duplicates, "skipped": bad}))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ltrr-client")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _plugins() -> list[Any]:
    """Command sets that other installed packages add to ``ltrr`` (entry point group ``ltrr.commands``):
    the server package's in-process commands (serve, ingest, train, ...). Each is a module with
    ``add_commands(sub, client_cmd)``, ``EVAL_KINDS`` and ``add_eval_arguments(parser)``."""
    from importlib.metadata import entry_points

    return [ep.load() for ep in sorted(entry_points(group="ltrr.commands"), key=lambda e: e.name)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrr", description="ltrr: learning-to-rank-and-retrieve server and client")
    p.add_argument("--version", action="version", version=f"ltrr {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    plugins = _plugins()

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
    eval_kinds = {"policy": cmd_eval_policy} | {k: fn for p in plugins for k, fn in p.EVAL_KINDS.items()}
    ev.add_argument("what", choices=list(eval_kinds), help='what to evaluate')
    ev.add_argument("policy_name", nargs="?", help="policy: the policy whose log is evaluated")
    ev.add_argument("--target", action="append", default=[], help="policy, repeatable (default: live and "
                                                                   "uniform): " + TARGET_HELP)
    _log_range_flags(ev, "policy: ")
    ev.add_argument("--estimators", help="policy: comma-separated among ips,snips,dr (default: all)")
    ev.add_argument("--baseline", help="policy: one of the targets, as --target gives it: every target is also "
                                       "estimated minus it, paired over the same events")
    ev.add_argument("--server", default=DEFAULT_TARGET, help="policy: server address (default %(default)s)")
    _tls_flags(ev)
    _timeout_flag(ev, "policy: ")
    ev.add_argument("--json", nargs="?", const="-", help="autocomplete: also write the table as JSON to this file; "
                                                       "policy: print the result as JSON instead of a table")
    for plugin in plugins:
        plugin.add_eval_arguments(ev)
    ev.set_defaults(fn=lambda a: eval_kinds[a.what](a))

    tu = sub.add_parser("tune", help="replay candidate learning configurations over a policy's log, estimate each; "
                                     "--apply switches to the best clearly better than the live configuration's replay")
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

    pol = client_cmd("policies", "list, describe, snapshot, change or show statistics of policies")
    pol.add_argument("action", choices=["list", "get", "stats", "snapshot", "update"],
                     help='list every policy; get, stats, snapshot or update one')
    pol.add_argument("name", nargs="?", default="demo", help='the policy (default %(default)s)')
    pol.add_argument("changes", nargs="*", metavar="FIELD=VALUE",
                     help="update: the spec fields to change, the rest kept (mode=online, learning_rate=0.25, "
                          "actions=a+b+c, description=...); a learning setting starts a new model")
    pol.set_defaults(fn=cmd_policies)
    for plugin in plugins:
        plugin.add_commands(sub, client_cmd)
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
