"""Runs every benchmark in turn (about 15 minutes) and prints a summary; JSON lands in bench/out/.

    make bench            # or: python -m bench.run_all [--quick]
"""

from __future__ import annotations

import argparse

from bench import bench_decide, bench_learner, bench_memory, bench_retrieve, bench_rewards, bench_search
from bench.common import save


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    quick = p.parse_args().quick
    save("decide", bench_decide.run(2 if quick else 5, 64, 1 if quick else 3))
    save("rewards", bench_rewards.run(10_000 if quick else 100_000, 1000, None, None))
    save("learner", bench_learner.run(10_000 if quick else 50_000, 5000, 3 if quick else 10))
    save("memory", bench_memory.run(0.5 if quick else 10, 1000))
    save("retrieve", bench_retrieve.run(10_000 if quick else 100_000, 200 if quick else 2000))
    save("search", bench_search.serving(10_000 if quick else 100_000, 2000)
         | bench_search.training(100_000 if quick else 1_000_000))


if __name__ == "__main__":
    main()
