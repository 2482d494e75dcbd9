"""VW alone over the bandit suite's worlds: a quick screen of learning settings before the suite.

    python -m bench.bench_vw_alone [--configs dm,mtr] [--cells logistic10:1,drift:1] [--streams 3]

No server: each (configuration, world seed, reward stream) is one ``--cb_explore_adf`` workspace
deciding and learning in chunks of ``bench_bandits.CHUNK`` events, as the suite sends them, with
the suite's delays and missing rewards. A configuration is VW arguments after
``--cb_explore_adf -b 18`` and how each decision is learned (``cb_type``: dm hands VW probability
1, mtr the logged one, as ``ltrr_server.policy.model`` does). Prints, per configuration and cell,
the last quarter's regret as a share of uniform random's, mean and worst over the reward streams,
and the mean share the greedy action alone would have had: the rest is what exploring cost, so
it tells a model that has not learned (greedy close to the total) from one exploring too much.
``ridge`` is the issue's reference learner instead of VW (``ridge_tail_ratio``).

It is a screen, not the benchmark: the server publishes models on its own pace, which this does
not imitate. A setting it favours is then checked by ``bench.bench_bandits``, through the server.
A run of 15 cells x 3 streams takes about 4 minutes per configuration on one core.
"""

from __future__ import annotations

import argparse
import statistics
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import vowpal_wabbit_next as vw

from bench.bandit_worlds import PROBLEMS, Features
from bench.bench_bandits import CHUNK
from ltrr_server.features import Namespaces, action_line, shared_line

_LEARNING = "-q :: --cubic ::A -l 0.5 --power_t 0.25"
CONFIGS: dict[str, tuple[str, str]] = {
    # name: (VW arguments, cb_type)
    "dm": ("--squarecb --gamma_scale 20.0 " + _LEARNING, "dm"),
    "mtr": ("--squarecb --gamma_scale 20.0 " + _LEARNING, "mtr"),
    "epsilon-dm": ("--epsilon 0.05 " + _LEARNING, "dm"),
    "epsilon-mtr": ("--epsilon 0.05 " + _LEARNING, "mtr"),
    "bag-dm": ("--bag 4 --epsilon 0.05 " + _LEARNING, "dm"),
    "bag-mtr": ("--bag 4 --epsilon 0.05 " + _LEARNING, "mtr"),
    "cover-dm": ("--cover 4 --epsilon 0.05 " + _LEARNING, "dm"),
    "cover-mtr": ("--cover 4 --epsilon 0.05 " + _LEARNING, "mtr"),
    # Coin betting (VW --coin) instead of AdaGrad: no learning rate or decay (-l, --power_t ignored).
    "coin": ("--squarecb --gamma_scale 20.0 -q :: --cubic ::A --coin", "dm"),
    # VW's other online updates, and AdaGrad without normalized updates: each worse than the
    # default on every cell screened (docs/benchmarks.md, "VW's other online updates").
    "ojanewton": ("--squarecb --gamma_scale 20.0 -q :: --cubic ::A --OjaNewton", "dm"),
    "ftrl": ("--squarecb --gamma_scale 20.0 -q :: --cubic ::A --ftrl", "dm"),
    "pistol": ("--squarecb --gamma_scale 20.0 -q :: --cubic ::A --pistol", "dm"),
    "unnormalized": ("--squarecb --gamma_scale 20.0 " + _LEARNING + " --adaptive --invariant", "dm"),
    # VW's online search over interactions (--automl, the ChaCha algorithm): 4 live configurations.
    "automl": ("--squarecb --gamma_scale 20.0 " + _LEARNING + " --automl 4 --interaction_type cubic", "dm"),
    # Screened against sparse's gap (docs/benchmarks.md, "Eleven more settings"): none wins or ties.
    "initial-t-10": ("--squarecb --gamma_scale 20.0 " + _LEARNING + " --initial_t 10", "dm"),
    "initial-t-1000": ("--squarecb --gamma_scale 20.0 " + _LEARNING + " --initial_t 1000", "dm"),
    "l1-1e-7": ("--squarecb --gamma_scale 20.0 " + _LEARNING + " --l1 1e-7", "dm"),
    "l1-1e-6": ("--squarecb --gamma_scale 20.0 " + _LEARNING + " --l1 1e-6", "dm"),
    "no-invariant": ("--squarecb --gamma_scale 20.0 " + _LEARNING + " --adaptive --normalized", "dm"),
    "no-invariant-l0.25": ("--squarecb --gamma_scale 20.0 -q :: --cubic ::A -l 0.25 --power_t 0.25 "
                           "--adaptive --normalized", "dm"),
    "no-invariant-l1": ("--squarecb --gamma_scale 20.0 -q :: --cubic ::A -l 1.0 --power_t 0.25 "
                        "--adaptive --normalized", "dm"),
    "no-invariant-pt0": ("--squarecb --gamma_scale 20.0 -q :: --cubic ::A -l 0.5 --power_t 0 "
                         "--adaptive --normalized", "dm"),
    "squarecb-elim": ("--squarecb --elim --gamma_scale 20.0 " + _LEARNING, "dm"),
    "gamma-exponent-0.4": ("--squarecb --gamma_scale 20.0 --gamma_exponent 0.4 " + _LEARNING, "dm"),
    "gamma-exponent-0.6": ("--squarecb --gamma_scale 20.0 --gamma_exponent 0.6 " + _LEARNING, "dm"),
}
CELLS = ("logistic10:1,logistic10:2,logistic10:3,drift:1,drift:2,drift:3,delayed:1,delayed:2,delayed:3,"
         "logistic50:1,demo:1,demo:2,demo:3,breast_cancer:1,digits:1")


def _namespaces(features: Features) -> Namespaces:
    """A world's features as the server's namespaces, so its VW lines are the server's."""
    return [(ns, list(fs.items())) for ns, fs in features.items()]


@dataclass(frozen=True)
class Job:
    config: str
    problem: str
    seed: int
    stream: int


@dataclass(frozen=True)
class Ratios:
    """The last quarter's regret over uniform random's: of the actions drawn, and of the greedy ones."""
    drawn: float
    greedy: float


def _ridge_features(features: Features) -> np.ndarray:
    """A logistic world's context as one-hot segment and device, the number, and a bias."""
    v = np.zeros(26)
    v[0], v[25] = 1.0, float(features["n"]["x"])
    v[1 + int(str(features["u"]["seg"])[1:]) % 20] = 1.0
    v[21 + int(str(features["d"]["dev"])[1:])] = 1.0
    return v


def ridge_tail_ratio(job: Job, gamma_scale: float = 20.0) -> Ratios:
    """The reference learner of issue 19: a ridge regression per action (refit every chunk) over a
    logistic world's context, with SquareCB's exploration (gamma = scale * sqrt(t)), as VW's."""
    problem = PROBLEMS[job.problem]
    world = problem.make(job.seed)
    k = len(world.actions)
    gram = [np.eye(26) for _ in range(k)]
    target = [np.zeros(26) for _ in range(k)]
    weights = np.zeros((k, 26))
    rng = np.random.default_rng(1000 * job.seed + job.stream)
    tail_from = problem.events - problem.events // 4
    regret = greedy = uniform = 0.0
    pending: deque[tuple[np.ndarray, int, float]] = deque()
    for start in range(0, problem.events, CHUNK):
        for t in range(start, start + CHUNK):
            features, expected = world.draw(t)
            x = _ridge_features(features)
            score = weights @ x
            best = int(np.argmax(score))
            p = 1.0 / (k + gamma_scale * np.sqrt(t + 1) * (score[best] - score))
            p[best] = 0.0
            p[best] = 1.0 - p.sum()
            a = int(rng.choice(k, p=p))
            if t >= tail_from:
                regret += float(expected.max() - expected[a])
                greedy += float(expected.max() - expected[best])
                uniform += float(expected.max() - expected.mean())
            clicked = rng.random() < expected[a] and not (problem.missing and rng.random() < problem.missing)
            pending.append((x, a, 1.0 if clicked else 0.0))
        while len(pending) > problem.delay:
            x, a, r = pending.popleft()
            gram[a] += np.outer(x, x)
            target[a] += r * x
        weights = np.array([np.linalg.solve(g, b) for g, b in zip(gram, target, strict=True)])
    return Ratios(regret / uniform, greedy / uniform)


def tail_ratio(job: Job) -> Ratios:
    """The last quarter's regret of one run over uniform random's."""
    if job.config == "ridge":
        return ridge_tail_ratio(job)
    args, cb_type = CONFIGS[job.config]
    problem = PROBLEMS[job.problem]
    world = problem.make(job.seed)
    ws = vw.Workspace(["--cb_explore_adf", "-b", "18", *args.split(), "--quiet"])
    parse = vw.TextFormatParser(ws).parse_line
    actions = [action_line(a, _namespaces(f)) for a, f in world.actions]
    rng = np.random.default_rng(1000 * job.seed + job.stream)
    tail_from = problem.events - problem.events // 4
    regret = greedy = uniform = 0.0
    pending: deque[tuple[str, int, float, float]] = deque()
    for start in range(0, problem.events, CHUNK):
        for t in range(start, start + CHUNK):
            features, expected = world.draw(t)
            shared = shared_line(_namespaces(features))
            p = np.zeros(len(actions))
            for i, prob in ws.predict_one([parse(shared)] + [parse(a) for a in actions]):
                p[i] = prob
            p = np.clip(p, 0.0, None) / np.clip(p, 0.0, None).sum()
            a = int(rng.choice(len(actions), p=p))
            if t >= tail_from:
                regret += float(expected.max() - expected[a])
                greedy += float(expected.max() - expected[int(np.argmax(p))])
                uniform += float(expected.max() - expected.mean())
            clicked = rng.random() < expected[a] and not (problem.missing and rng.random() < problem.missing)
            pending.append((shared, a, -1.0 if clicked else 0.0, float(p[a]) if cb_type == "mtr" else 1.0))
        while len(pending) > problem.delay:
            shared, a, cost, prob = pending.popleft()
            lines = [shared] + [f"0:{cost!r}:{prob!r} {line}" if i == a else line for i, line in enumerate(actions)]
            ws.learn_one([parse(line) for line in lines])
    return Ratios(regret / uniform, greedy / uniform)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="dm,mtr",
                   help=f"of {', '.join(CONFIGS)}, or ridge (the logistic worlds only: see ridge_tail_ratio)")
    p.add_argument("--cells", default=CELLS, help="problem:world_seed,...")
    p.add_argument("--streams", type=int, default=3, help="reward streams per cell")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    names = a.configs.split(",")
    cells = [(c.split(":")[0], int(c.split(":")[1])) for c in a.cells.split(",")]
    jobs = [Job(n, prob, seed, s) for n in names for prob, seed in cells for s in range(1, a.streams + 1)]
    with ProcessPoolExecutor(a.workers) as pool:
        ratios = dict(zip(jobs, pool.map(tail_ratio, jobs), strict=True))
    for n in names:
        row = []
        for prob, seed in cells:
            r = [ratios[Job(n, prob, seed, s)] for s in range(1, a.streams + 1)]
            drawn = [x.drawn for x in r]
            row.append(f"{prob}:{seed}={statistics.mean(drawn):.3f} (worst {max(drawn):.3f}, "
                       f"greedy {statistics.mean(x.greedy for x in r):.3f})")
        print(f"{n:<12} " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()
