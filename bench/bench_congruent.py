"""Safe promotion: does positive-congruent training keep what the live version got right?

    python -m bench.bench_congruent [--items 2000] [--pairs 12000] [--seeds 42 7 3] [--thresholds 0.1 0.4]

Per world seed: v1 is trained on the first half of the demo music world's pairs; then, per weight
threshold, a plain retrain on all the pairs and the same retrain with ``congruent`` (focal
distillation toward v1's right answers, ``xmr/train.distillation_targets``) at each weight. Every
version is measured by ``train.compare`` on the model's one evaluation set (the pairs a stable hash
holds out, which no version trains on), as the promotion gate measures it: recall@10 of v1 and of
the new version, and the negative flip rate (the share of held-out pairs v1 got right and the new
version gets wrong; the gate refuses above 0.05). The ceiling for the flip rate is the plain
retrain's in the same run: the figure is the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import save
from ltrr_server.demo.music import MusicWorld
from ltrr_server.log import db
from ltrr_server.xmr import train as xt
from ltrr_server.xmr.model import XmrModel, XmrTrainParams
from ltrr_server.xmr.registry import ModelRegistry


def measured(registry: ModelRegistry, live: XmrModel, version: int) -> dict[str, float]:
    folder = Path(registry.get("m", version)["path"])
    return xt.compare(live, XmrModel.load(folder), folder)


def run(items: int, n_pairs: int, seeds: list[int], thresholds: list[float], weights: list[float]
        ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        pairs = xt.demo_pairs(MusicWorld(n_items=items, seed=seed), n_pairs)
        half = xt.Pairs(pairs.queries[:n_pairs // 2], pairs.items[:n_pairs // 2])
        with tempfile.TemporaryDirectory() as tmp:
            engine = db.create_engine(f"sqlite:///{tmp}/l.db")
            db.migrate(engine)
            registry = ModelRegistry(engine, Path(tmp) / "models")
            v1, _ = xt.train(registry, "m", half, XmrTrainParams())
            live = XmrModel.load(Path(registry.get("m", v1)["path"]))
            for threshold in thresholds:
                t0 = time.perf_counter()
                version, _ = xt.train(registry, "m", pairs, XmrTrainParams(threshold=threshold))
                plain = measured(registry, live, version) | {"seconds": round(time.perf_counter() - t0, 1)}
                for weight in weights:
                    t0 = time.perf_counter()
                    version, _ = xt.train(registry, "m", pairs, XmrTrainParams(threshold=threshold, congruent=weight),
                                          live=live)
                    cong = measured(registry, live, version) | {"seconds": round(time.perf_counter() - t0, 1)}
                    row = {"seed": seed, "threshold": threshold, "congruent": weight,
                           "heldout_pairs": int(plain["heldout_pairs"]),
                           "recall_live": round(plain["recall_live"], 4),
                           "recall_plain": round(plain["recall_new"], 4),
                           "recall_congruent": round(cong["recall_new"], 4),
                           "nfr_plain": round(plain["negative_flip_rate"], 4),
                           "nfr_congruent": round(cong["negative_flip_rate"], 4),
                           "nfr_ratio": round(cong["negative_flip_rate"] / max(plain["negative_flip_rate"], 1e-9), 2),
                           "seconds_plain": plain["seconds"], "seconds_congruent": cong["seconds"]}
                    rows.append(row)
                    print(row, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=2000, help="the demo catalog's size")
    p.add_argument("--pairs", type=int, default=12000, help="pairs of the retrain (v1 gets the first half)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 3], help="world seeds")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.4], help="weight-pruning thresholds")
    p.add_argument("--weights", type=float, nargs="+", default=[1.0], help="congruent weights")
    args = p.parse_args()
    rows = run(args.items, args.pairs, args.seeds, args.thresholds, args.weights)
    save("congruent", {"items": args.items, "pairs": args.pairs, "rows": rows})


if __name__ == "__main__":
    main()
