"""The bandit suite: every problem of ``bandit_worlds`` against candidate policy configurations,
through the real server, several seeds; regret against uniform random, the best fixed action and
the oracle, per window and over the last quarter of each run; a table and a plot.

    python -m bench.bench_bandits [--problems logistic10,digits] [--seeds 3] [--first-seed 1]
                                  [--streams 1] [--candidates default,epsilon]
                                  [--scale 1.0] [--reward-unit 1.0] [--plot bench/out/bandits.png]

All candidates of a problem run in one server, side by side on the same stream of contexts:
each event is decided by every candidate's policy, and each is rewarded by its own draw. Each
(problem, seed, stream) gets a fresh server on a fresh SQLite file. A seed is a world (its
parameters and its contexts); ``--streams`` runs it again with new reward draws, and a seed's
figure is then the mean over its streams: one stream's last quarter moves by ±0.05–0.1 of
uniform's regret, more than most settings differ.

A candidate is a policy spec's learning fields as TOML; ``default`` sets none of them, so it is
what a policy gets when its spec says nothing.

``--reward-unit U`` reports every click as a reward of U instead of 1 (revenue, dwell seconds),
and adds the candidate ``scaled``: the default told ``reward_scale = U``. Regret is measured on
the clicks' probabilities, so the figures compare with the suite's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.bandit_worlds import PROBLEMS, Problem, World
from bench.common import OUT, LtrrProcess, save
from ltrr.v1 import feedback_pb2
from ltrr_client.client import AsyncLtrrClient, decide_request, reward_event
from ltrr_client.simulate import send_rewards

CANDIDATES: dict[str, str] = {
    "default": "",
    # What a spec that said nothing got before the suite chose the defaults.
    "before": 'exploration = "epsilon"\nepsilon = 0.05\ninteractions = []\nsquarecb_gamma_scale = 10.0\npower_t = 0.5\n'
              'cb_type = "mtr"',
    # The default until 2026-11-30 (third session): the same, learning each decision 1/p times.
    "mtr": 'cb_type = "mtr"',
    # The lead of 2026-11-30's tune run: under dm, learning rate 0.25 beat 0.5 on logistic10.
    "lr25": "learning_rate = 0.25",
    "lr35": "learning_rate = 0.35",
    # Coin betting instead of AdaGrad (VW --coin): better with few clicks in bench_vw_alone.
    "coin": 'optimizer = "coin"',
    "cubic_eps": 'exploration = "epsilon"\nepsilon = 0.05',
    "epsilon": 'exploration = "epsilon"\nepsilon = 0.05\ninteractions = ["::"]',
    "squarecb": 'exploration = "squarecb"\ninteractions = ["::"]',
    "bag": 'exploration = "bag"\nensemble_size = 4\nepsilon = 0.05\ninteractions = ["::"]',
    "cover": 'exploration = "cover"\nensemble_size = 4\nepsilon = 0.05\ninteractions = ["::"]',
}
# Events decided together (each by every candidate) before their rewards are drawn and sent.
CHUNK = 32


def _toml_value(v: Any) -> str:
    return json.dumps(v)


def config_for(world: World, candidates: dict[str, str], join_window: float) -> str:
    """A server config: one policy per candidate, each with the world's actions."""
    actions = []
    for aid, feats in world.actions:
        line = f'[[policies.actions]]\nid = "{aid}"'
        if feats:
            inner = ", ".join(f"{ns} = {{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in fs.items()) + " }"
                              for ns, fs in feats.items())
            line += f"\nfeatures = {{ {inner} }}"
        actions.append(line)
    parts = ["[server]\npublish_interval_seconds = 0.05\nsnapshot_interval_seconds = 3600\n"]
    for name, spec in candidates.items():
        parts.append(f'[[policies]]\nname = "{name}"\njoin_window_seconds = {join_window}\n{spec}\n'
                     + "\n".join(actions) + "\n")
    return "\n".join(parts)


@dataclass
class Tally:
    """Regret sums of one candidate: per window and over the run's last quarter."""

    windows: list[float] = field(default_factory=list)
    tail: float = 0.0


@dataclass
class RunResult:
    problem: str
    seed: int
    stream: int
    events: int
    windows: int
    uniform_windows: list[float]
    uniform_tail: float
    best_fixed_tail: float
    candidates: dict[str, Tally]
    seconds: float

    def tail_ratio(self, name: str) -> float:
        return self.candidates[name].tail / self.uniform_tail

    def best_fixed_ratio(self) -> float:
        return self.best_fixed_tail / self.uniform_tail


async def run_problem(problem: Problem, seed: int, candidates: dict[str, str], scale: float = 1.0,
                      windows: int = 10, progress: bool = True,
                      before_stop: Callable[[LtrrProcess], Awaitable[None]] | None = None,
                      stream: int = 0, reward_unit: float = 1.0) -> RunResult:
    """One run of world ``seed``, its rewards drawn by reward stream ``stream`` (0: the suite's own,
    as every run before streams existed); ``before_stop`` is given the server once every reward is
    sent (to ask it more)."""
    world = problem.make(seed)
    events = max(int(problem.events * scale) // CHUNK * CHUNK, CHUNK * windows)
    delay = int(problem.delay * scale)
    join_window = 30.0 if problem.missing or delay else 600.0
    server = LtrrProcess(config_for(world, candidates, join_window), metrics=False)
    names = list(candidates)
    rng = np.random.default_rng(seed + 31 if stream == 0 else [seed, 31, stream])
    per_window = events // windows
    tail_from = events - events // 4
    tallies = {n: Tally(windows=[0.0] * windows) for n in names}
    uniform_windows = [0.0] * windows
    uniform_tail = 0.0
    fixed = np.zeros(len(world.actions))
    best_tail = 0.0
    pending: deque[tuple[int, feedback_pb2.RewardEvent]] = deque()
    index = {aid: i for i, (aid, _) in enumerate(world.actions)}
    started = time.perf_counter()
    try:
        async with AsyncLtrrClient(server.target, timeout=60) as client:
            for start in range(0, events, CHUNK):
                drawn = [world.draw(t) for t in range(start, start + CHUNK)]
                resps = await asyncio.gather(*(client.decisions.Decide(decide_request(n, feats))
                                               for feats, _ in drawn for n in names))
                for k, (_, expected) in enumerate(drawn):
                    t = start + k
                    w = min(t // per_window, windows - 1)
                    best = float(expected.max())
                    u = best - float(expected.mean())
                    uniform_windows[w] += u
                    if t >= tail_from:
                        uniform_tail += u
                        fixed += expected
                        best_tail += best
                    for j, n in enumerate(names):
                        resp = resps[k * len(names) + j]
                        a = index[resp.chosen_action_id]
                        regret = best - float(expected[a])
                        tallies[n].windows[w] += regret
                        if t >= tail_from:
                            tallies[n].tail += regret
                        if rng.random() >= problem.missing:
                            value = reward_unit if rng.random() < expected[a] else 0.0
                            pending.append((t + delay, reward_event(resp.event_id, value, oracle_best=best,
                                                                    oracle_chosen=float(expected[a]))))
                due = []
                while pending and pending[0][0] <= start + CHUNK:
                    due.append(pending.popleft()[1])
                if due:
                    await send_rewards(client, due)
                if progress and (start // CHUNK) % max(1, events // CHUNK // 20) == 0:
                    print(f"\r  {problem.name} seed {seed}: {start + CHUNK}/{events} events", end="",
                          file=sys.stderr, flush=True)
            if pending:
                await send_rewards(client, [e for _, e in pending])
        if before_stop is not None:
            await before_stop(server)
    finally:
        server.stop()
    if progress:
        print(file=sys.stderr)
    n_window = [per_window] * (windows - 1) + [events - per_window * (windows - 1)]
    for tally in tallies.values():
        tally.windows = [s / c for s, c in zip(tally.windows, n_window, strict=True)]
    return RunResult(problem.name, seed, stream, events, windows, [s / c for s, c in zip(uniform_windows, n_window,
                                                                                  strict=True)],
                     uniform_tail, best_tail - float(fixed.max()), tallies, time.perf_counter() - started)


@dataclass
class SeedResult:
    """One world seed of a problem: its runs' tail ratios (one per reward stream) and their mean."""

    seed: int
    best_fixed: float
    per_stream: dict[str, list[float]]

    def ratio(self, name: str) -> float:
        return statistics.mean(self.per_stream[name])


def by_seed(results: list[RunResult], names: list[str]) -> dict[str, list[SeedResult]]:
    """Per problem, per world seed: the streams' tail ratios of every candidate."""
    out: dict[str, list[SeedResult]] = {}
    for r in results:
        seeds = out.setdefault(r.problem, [])
        if not seeds or seeds[-1].seed != r.seed:
            # The best fixed action is the world's and its contexts', the same in every stream.
            seeds.append(SeedResult(r.seed, r.best_fixed_ratio(), {n: [] for n in names}))
        for n in names:
            seeds[-1].per_stream[n].append(r.tail_ratio(n))
    return out


def summarize(results: list[RunResult], names: list[str]) -> dict[str, Any]:
    """Per problem: each candidate's tail regret as a share of uniform's, per seed (the mean over
    its streams), with the median and worst over seeds."""
    table: dict[str, Any] = {}
    for problem, seeds in by_seed(results, names).items():
        row: dict[str, Any] = {"best_fixed": [round(s.best_fixed, 3) for s in seeds]}
        for n in names:
            ratios = [s.ratio(n) for s in seeds]
            row[n] = {"median": round(statistics.median(ratios), 3), "worst": round(max(ratios), 3),
                      "per_seed": [round(x, 3) for x in ratios],
                      "beats_best_fixed": all(s.ratio(n) < s.best_fixed for s in seeds)}
            if len(seeds[0].per_stream[n]) > 1:
                row[n]["per_stream"] = [[round(x, 3) for x in s.per_stream[n]] for s in seeds]
        table[problem] = row
    return table


def print_table(table: dict[str, Any], names: list[str]) -> None:
    print(f"{'problem':<14} {'best fixed':>10} " + " ".join(f"{n:>10}" for n in names))
    for problem, row in table.items():
        bf = statistics.median(row["best_fixed"])
        cells = " ".join(f"{row[n]['median']:>9.2f}{'*' if not row[n]['beats_best_fixed'] else ' '}" for n in names)
        print(f"{problem:<14} {bf:>10.2f} {cells}")
    print("tail regret (last quarter) as a share of uniform random's, median over seeds; "
          "* = not below the best fixed action in every seed")


def plot(results: list[RunResult], names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(r.problem for r in results))
    cols = min(4, len(problems))
    rows = (len(problems) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, problem in zip(axes.flat, problems, strict=False):
        runs = [r for r in results if r.problem == problem]
        x = [(i + 1) * runs[0].events / runs[0].windows for i in range(runs[0].windows)]
        for n in names:
            y = np.median([[c / u for c, u in zip(r.candidates[n].windows, r.uniform_windows, strict=True)]
                           for r in runs], axis=0)
            ax.plot(x, y, label=n, linewidth=2.2 if n == "default" else 1.2)
        ax.axhline(statistics.median(r.best_fixed_ratio() for r in runs), color="grey", linestyle="--",
                   label="best fixed (last quarter)")
        ax.set_title(problem)
        ax.set_ylim(0, 1.3)
        ax.set_xlabel("events")
        ax.set_ylabel("regret / uniform's")
    for ax in list(axes.flat)[len(problems):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    seeds = len({r.seed for r in results})
    fig.suptitle(f"bench_bandits: regret per window as a share of uniform's (median of {seeds} seeds), "
                 f"{len(problems)} problems, candidates: {', '.join(names)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=1, help="seeds run from this one on")
    p.add_argument("--streams", type=int, default=1,
                   help="reward streams per seed; a seed's figure is their mean (1: the suite's own stream)")
    p.add_argument("--scale", type=float, default=1.0, help="share of each problem's events to run")
    p.add_argument("--reward-unit", type=float, default=1.0,
                   help="a click's reward (1: the suite's own); adds the candidate `scaled`, told reward_scale")
    p.add_argument("--plot", default=str(OUT / "bandits.png"))
    p.add_argument("--check", type=float, default=None, metavar="RATIO",
                   help="exit 1 unless, in every run, the default's tail regret is at most RATIO of "
                        "uniform's and below the best fixed action's (the CI's reduced run)")
    a = p.parse_args()
    names = a.candidates.split(",")
    if a.check is not None and "default" not in names:
        p.error("--check judges the default candidate: include it in --candidates")
    catalog = CANDIDATES | {"scaled": f"reward_scale = {a.reward_unit!r}"}
    candidates = {n: catalog[n] for n in names}
    results = []
    for problem in a.problems.split(","):
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            for stream in range(a.streams):
                results.append(asyncio.run(run_problem(PROBLEMS[problem], seed, candidates, a.scale,
                                                       stream=stream, reward_unit=a.reward_unit)))
    table = summarize(results, names)
    print_table(table, names)
    OUT.mkdir(parents=True, exist_ok=True)
    plot(results, names, a.plot)
    save("bandits", {"scale": a.scale, "reward_unit": a.reward_unit, "seeds": a.seeds, "streams": a.streams,
                     "candidates": candidates,
                     "table": table,
                     "seconds": round(sum(r.seconds for r in results), 1)})
    if a.check is not None:
        seeds = [(problem, s) for problem, ss in by_seed(results, names).items() for s in ss]
        failed = [f"{problem} seed {s.seed}: {s.ratio('default'):.3f} of uniform's regret (best fixed "
                  f"{s.best_fixed:.3f})" for problem, s in seeds
                  if not s.ratio("default") <= min(a.check, s.best_fixed)]
        if failed:
            raise SystemExit("the default configuration did not learn well enough:\n  " + "\n  ".join(failed))
        print(f"the default configuration: at most {a.check} of uniform's regret and below the best fixed action "
              f"in all {len(seeds)} seeds")


if __name__ == "__main__":
    main()
