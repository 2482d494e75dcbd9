"""Follows the Dockerfile on the host, without a container engine, and health-checks the result.

CI machines have the docker client but no engine, so ``docker build`` cannot run there. This
reads the Dockerfile and does what it says, as far as a host allows, so that a missing file in
a COPY, a dependency left out of the non-dev install, a wrong entrypoint or a broken health
check fails CI instead of a user's first ``docker compose up``:

- container paths (WORKDIR, COPY destinations) live under one scratch root, the same for every
  stage, so ``COPY --from=build /app /app`` is what Docker makes of it: the same absolute path;
- the base image's Python (``FROM python:3.11-slim``) is a fresh venv of the host's Python,
  first on PATH for every RUN, which runs in bash in the stage's WORKDIR with its ENV;
- COPY honours ``.dockerignore``;
- steps that would change the host's users (``useradd``, ``chown``, ``USER``) are shown and skipped;
- then ENTRYPOINT + CMD start in the final WORKDIR, the HEALTHCHECK command is run until it
  passes, and the server is stopped with SIGTERM, as ``docker stop`` does, and must exit 0
  within Docker's 10 s grace;
- with ``--db URL``, the same again with ``serve --db URL`` in a fresh WORKDIR, as the compose
  file runs it against PostgreSQL.

    python deploy/dockerfile_dry_run.py [--dockerfile Dockerfile] [--root DIR] [--db URL]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Instructions that would change the host's users and file owners: shown, not run.
_HOST_CHANGING = re.compile(r"^\s*(useradd|adduser|groupadd|chown|chmod)\b")
_STOP_GRACE = 10.0  # docker stop's default


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str
    steps: list[Instruction] = field(default_factory=list)


def parse(text: str) -> list[Stage]:
    """The Dockerfile's stages and their instructions, continuation lines joined.

    >>> text = "FROM python:3.11-slim AS build\\nRUN a \\\\\\n  b\\n# note\\nFROM python:3.11-slim\\nCMD [\\"x\\"]"
    >>> stages = parse(text)
    >>> [(s.base, s.name, [(i.keyword, i.args) for i in s.steps]) for s in stages]
    [('python:3.11-slim', 'build', [('RUN', 'a b')]), ('python:3.11-slim', '', [('CMD', '["x"]')])]
    """
    stages: list[Stage] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full, pending = (pending + line).strip(), ""
        keyword, _, args = full.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ") if " AS " in args else args.partition(" as ")
            stages.append(Stage(base.strip(), name.strip()))
        elif not stages:
            raise ValueError(f"line {start}: {keyword} before FROM")
        else:
            stages[-1].steps.append(Instruction(keyword, args, start))
    return stages


def command_words(args: str) -> list[str]:
    """CMD, ENTRYPOINT and HEALTHCHECK CMD arguments: exec form (JSON) or shell form.

    >>> command_words('["ltrr", "serve"]'), command_words("python -c 'print(1)'")
    (['ltrr', 'serve'], ['/bin/sh', '-c', "python -c 'print(1)'"])
    """
    if args.startswith("["):
        words = json.loads(args)
        assert isinstance(words, list) and all(isinstance(w, str) for w in words), args
        return words
    return ["/bin/sh", "-c", args]


def healthcheck_command(args: str) -> list[str]:
    """The command of ``HEALTHCHECK [--options] CMD ...``.

    >>> healthcheck_command("--interval=10s --timeout=3s CMD python -c 'x'")
    ['/bin/sh', '-c', "python -c 'x'"]
    """
    words = args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    if not words or words[0].upper() != "CMD":
        raise ValueError(f"HEALTHCHECK without CMD: {args!r}")
    return command_words(" ".join(words[1:]).strip())


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` patterns exclude a path of the build context.

    The subset this repository uses: globs from the context's root, ``**/`` globs at any depth,
    ``!`` to include again.

    >>> p = [".venv", "**/__pycache__", "ltrr.db*", "bench/out"]
    >>> [ignored(x, p) for x in ["server/a/__pycache__", "ltrr.db-wal", "bench/out", "server/x.py", ".venv"]]
    [True, True, True, False, True]
    """
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!")
        if pat.startswith("**/"):  # at any depth
            hit = any(fnmatch.fnmatchcase(part, pat[3:]) for part in parts)
        else:  # from the context's root; a matched directory excludes what is under it
            hit = any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes)
        if hit:
            result = not negate
    return result


def dockerignore_patterns(context: Path) -> list[str]:
    """The patterns of the context's ``.dockerignore`` (none without one), comments dropped."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


class DryRun:
    def __init__(self, dockerfile: Path, root: Path) -> None:
        self.context = dockerfile.parent
        self.stages = parse(dockerfile.read_text())
        self.root = root
        self.ignore = dockerignore_patterns(self.context)
        self.python = root / "_base-python"
        self.workdir = "/"
        self.env: dict[str, str] = {}
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.health: list[str] = []
        self.exposed: list[int] = []
        # Top-level container directories made so far: their paths are mapped under the root.
        self._tops: set[str] = set()

    # ------------------------------------------------------------------ paths
    def host(self, container_path: str) -> Path:
        path = container_path if container_path.startswith("/") else f"{self.workdir.rstrip('/')}/{container_path}"
        top = path.strip("/").split("/")[0]
        if top:
            self._tops.add(top)
        return self.root / path.lstrip("/")

    def map_text(self, text: str) -> str:
        """Container paths in an ENV value or a command, as their host paths."""
        for top in sorted(self._tops, key=len, reverse=True):
            text = re.sub(rf"(?<![\w./-])/{re.escape(top)}(?=/|\b|$)", f"{self.root}/{top}", text)
        return text

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The base image's Python first, as in python:3.11-slim; nothing of the caller's venv.
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{self.python}/bin:{env['PATH']}"
        for key, value in self.env.items():
            value = self.map_text(value)
            for ref in (f"${{{key}}}", f"${key}"):  # only a variable's own earlier value is expanded
                value = value.replace(ref, env.get(key, ""))
            env[key] = value
        return env

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(self.python)], check=True)
        total = sum(len(s.steps) + 1 for s in self.stages)
        n = 0
        for stage in self.stages:
            n += 1
            print(f"[{n}/{total}] FROM {stage.base}{' AS ' + stage.name if stage.name else ''}"
                  f"  (host: {sys.version.split()[0]} in a fresh venv)", flush=True)
            self.workdir, self.env = "/", {}
            self.entrypoint, self.cmd, self.health = [], [], []
            for step in stage.steps:
                n += 1
                print(f"[{n}/{total}] {step.keyword} {step.args}", flush=True)
                self.run_step(step)

    def run_step(self, step: Instruction) -> None:
        do = getattr(self, f"do_{step.keyword.lower()}", None)
        if do is None:
            raise NotImplementedError(f"Dockerfile line {step.line}: the dry run does not know {step.keyword}; "
                                      f"teach it (deploy/dockerfile_dry_run.py) before using it")
        do(step.args)

    def do_workdir(self, args: str) -> None:
        self.workdir = args if args.startswith("/") else f"{self.workdir.rstrip('/')}/{args}"
        self.host(self.workdir).mkdir(parents=True, exist_ok=True)

    def do_env(self, args: str) -> None:
        key, sep, value = args.partition("=")
        if not sep:
            key, _, value = args.partition(" ")
        self.env[key.strip()] = value.strip().strip('"')

    def do_run(self, args: str) -> None:
        if _HOST_CHANGING.match(args):
            print("    skipped: changes the host's users or owners", flush=True)
            return
        subprocess.run(["bash", "-euo", "pipefail", "-c", self.map_text(args)], cwd=self.host(self.workdir),
                       env=self.process_env(), check=True)

    def do_copy(self, args: str) -> None:
        words = shlex.split(args)
        source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        words = [w for w in words if not w.startswith("--")]
        *sources, dest = words
        if source_stage is not None:
            for src in sources:
                if self.host(src) != self.host(dest):
                    raise NotImplementedError(f"COPY --from={source_stage} {src} {dest}: only onto the same path")
            print("    same path in every stage here: already in place", flush=True)
            return
        target = self.host(dest)
        for src in sources:
            path = self.context / src
            if not path.exists():
                raise FileNotFoundError(f"COPY {src}: not in the build context {self.context}")
            if ignored(src.rstrip("/"), self.ignore):
                raise FileNotFoundError(f"COPY {src}: excluded by .dockerignore")
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True, ignore=self._ignore_under())
            else:
                into_dir = dest.endswith("/") or len(sources) > 1
                file = target / path.name if into_dir else target
                file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, file)

    def _ignore_under(self) -> Callable[[str, list[str]], list[str]]:
        def skip(directory: str, names: list[str]) -> list[str]:
            rel = Path(directory).relative_to(self.context).as_posix()
            return [n for n in names if ignored(f"{rel}/{n}" if rel != "." else n, self.ignore)]
        return skip

    def do_user(self, args: str) -> None:
        print(f"    skipped: runs as the current user, not {args}", flush=True)

    def do_expose(self, args: str) -> None:
        self.exposed = [int(p.split("/")[0]) for p in args.split()]

    def do_entrypoint(self, args: str) -> None:
        self.entrypoint = command_words(args)

    def do_cmd(self, args: str) -> None:
        self.cmd = command_words(args)

    def do_healthcheck(self, args: str) -> None:
        self.health = healthcheck_command(args)

    # ------------------------------------------------------------------ run
    def run_container(self, cmd: list[str] | None, workdir: Path, timeout: float) -> None:
        """Starts ENTRYPOINT + CMD (or ``cmd``), waits for the health check, stops as docker stop does."""
        for port in self.exposed:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(f"port {port} (EXPOSE) is in use here: stop what listens on it first")
        workdir.mkdir(parents=True, exist_ok=True)
        argv = self.entrypoint + (cmd if cmd is not None else self.cmd)
        env = self.process_env()
        print(f"run: {shlex.join(argv)}  (in {workdir})", flush=True)
        proc = subprocess.Popen(argv, cwd=workdir, env=env)
        try:
            start = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the container's process exited with {proc.returncode} before it was healthy")
                check = subprocess.run(self.health, cwd=workdir, env=env, capture_output=True, timeout=30)
                if check.returncode == 0:
                    print(f"healthy after {time.monotonic() - start:.0f}s", flush=True)
                    break
                if time.monotonic() - start > timeout:
                    raise RuntimeError(f"not healthy within {timeout:.0f}s; last check: "
                                       f"{check.stdout.decode()}{check.stderr.decode()}")
                time.sleep(2)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"still running {_STOP_GRACE:.0f}s after SIGTERM: docker stop kills it") from exc
            if code != 0:
                raise RuntimeError(f"exited with {code} on SIGTERM")
            print("stopped cleanly on SIGTERM", flush=True)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dockerfile", type=Path, default=REPO / "Dockerfile")
    p.add_argument("--root", type=Path, help="scratch root to build in (default: a new temporary directory)")
    p.add_argument("--db", help="also run `serve --db URL`, as the compose file does with PostgreSQL")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for health (default 300)")
    a = p.parse_args()
    root = a.root or Path(tempfile.mkdtemp(prefix="ltrr-image-"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    dry = DryRun(a.dockerfile.resolve(), root.resolve())
    dry.build()
    if not dry.entrypoint and not dry.cmd:
        raise SystemExit("the final stage has neither ENTRYPOINT nor CMD")
    if not dry.health:
        raise SystemExit("the final stage has no HEALTHCHECK")
    dry.run_container(None, dry.host(dry.workdir), a.timeout)
    if a.db:
        compose = ["serve", "--db", a.db, "--host", "0.0.0.0", "--insecure"]  # as deploy/docker-compose.yml
        dry.run_container(compose, dry.host(dry.workdir) / "_compose", a.timeout)
    shutil.rmtree(root, ignore_errors=True)
    print("the Dockerfile's recipe builds, serves and passes its health check", flush=True)


if __name__ == "__main__":
    main()
