"""The LambdaMART ranker: gradient-boosted trees (LightGBM's lambdarank) trained from the logged pages.

``ltrr train ranker`` reads a policy's pages and engagements (``pagelog``), trains, and registers
a version in the model registry; promoted, it orders Search's pages when
``[retrieval.ranking] ranker = "model:NAME"``. Clicks are biased toward the top of the page: by
default LightGBM learns a position factor beside the trees (``Dataset(position=...)``, unbiased
LambdaMART as in Hu et al., "Unbiased LambdaMART", WWW 2019), so the trees model relevance and
the positions explain the rest; ``debias=False`` trains on the raw clicks.

>>> import numpy as np
>>> from ltrr_server.ranking.pagelog import LoggedPages
>>> rng = np.random.default_rng(0)
>>> pages = LoggedPages(names=["bm25", "noise"])
>>> for _ in range(300):  # the relevant item (bm25 1) is engaged with wherever it is shown
...     for k, rel in enumerate(rng.permutation([1, 0, 0, 0])):
...         pages.rows.append([float(rel), float(rng.random())]); pages.kinds.append("song")
...         pages.labels.append(float(rel)); pages.positions.append(k)
...     pages.groups.append(4); pages.event_ids.append("e")
>>> ranker = LambdaMartRanker.train(pages, LambdaMartParams(trees=20, min_data_in_leaf=5))
>>> scores = ranker.score(np.array([[0.0, 0.9], [1.0, 0.1]], dtype=np.float32), ["bm25", "noise"], ["song", "song"])
>>> scores[1] > scores[0]
True
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltrr_server.errors import FailedPrecondition, InvalidArgument
from ltrr_server.ranking.features import Candidates
from ltrr_server.ranking.pagelog import LoggedPages

MODEL_FILE = "model.txt"
META_FILE = "ranker.json"
HELDOUT_FILE = "heldout.npz"


@dataclass(frozen=True)
class LambdaMartParams:
    trees: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    # Learn a position factor beside the trees (unbiased LambdaMART); False: raw clicks.
    debias: bool = True
    threads: int = 0
    seed: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.trees <= 10_000:
            raise InvalidArgument("trees", f"must be in [1, 10000], got {self.trees}")
        if not 0 < self.learning_rate <= 1:
            raise InvalidArgument("learning_rate", f"must be in (0, 1], got {self.learning_rate}")
        if not 2 <= self.num_leaves <= 4096:
            raise InvalidArgument("num_leaves", f"must be in [2, 4096], got {self.num_leaves}")
        if not 1 <= self.min_data_in_leaf <= 1_000_000:
            raise InvalidArgument("min_data_in_leaf", f"must be in [1, 1000000], got {self.min_data_in_leaf}")


class LambdaMartRanker:
    kind = "ranker"

    def __init__(self, booster: Any, names: list[str], kinds: list[str], meta: dict[str, Any]) -> None:
        self.booster = booster
        self.names = names
        self.kinds = kinds  # item types by the code the trees know them by
        self.meta = meta
        self._kind_codes = {k: i for i, k in enumerate(kinds)}
        # Saved with the version: the held-out pages the promotion gate measures it on.
        self.heldout: LoggedPages | None = None

    @classmethod
    def train(cls, pages: LoggedPages, params: LambdaMartParams,
              progress: Callable[[str, int, int], None] | None = None) -> LambdaMartRanker:
        import lightgbm as lgb

        if not pages.groups:
            raise FailedPrecondition("no logged pages to train on: serve Search and report engagements first",
                                     field="policy")
        if not any(label > 0 for label in pages.labels):
            raise FailedPrecondition("the logged pages have no engagements to learn from", field="policy")
        kinds = sorted(set(pages.kinds))
        codes = {k: i for i, k in enumerate(kinds)}
        x = np.column_stack([pages.matrix, np.array([codes[k] for k in pages.kinds], dtype=np.float32)])
        labels = np.minimum(np.rint(pages.labels), 30).astype(np.int32)
        lgb_params: dict[str, Any] = {
            "objective": "lambdarank", "learning_rate": params.learning_rate, "num_leaves": params.num_leaves,
            "min_data_in_leaf": params.min_data_in_leaf, "lambdarank_truncation_level": 20, "verbosity": -1,
            "seed": params.seed, "deterministic": True, "num_threads": params.threads,
        }
        data = lgb.Dataset(x, labels, group=pages.groups, feature_name=[*pages.names, "item_type"],
                           categorical_feature=["item_type"],
                           position=np.asarray(pages.positions, dtype=np.int32) if params.debias else None,
                           params={"verbosity": -1})

        def report(env: Any) -> None:
            if progress is not None:
                progress("boosting trees", env.iteration + 1, params.trees)

        booster = lgb.train(lgb_params, data, num_boost_round=params.trees, callbacks=[report])
        meta = {"params": asdict(params), "pages": len(pages.groups), "impressions": len(pages.labels),
                "engaged_pages": pages.engaged_pages(), "features": pages.names}
        return cls(booster, list(pages.names), kinds, meta)

    def score_candidates(self, candidates: Candidates) -> list[float]:
        return self.score(candidates.matrix, candidates.space.names, candidates.kinds())

    def score(self, matrix: np.ndarray[Any, Any], names: Sequence[str], kinds: Sequence[str]) -> list[float]:
        """Scores of rows whose columns are ``names`` (aligned to the model's by name; a feature the
        model knows and the rows lack counts as 0); ``kinds``: each row's item type."""
        n = len(matrix)
        if n == 0:
            return []
        index = {name: i for i, name in enumerate(names)}
        x = np.zeros((n, len(self.names) + 1), dtype=np.float32)
        for c, name in enumerate(self.names):
            i = index.get(name)
            if i is not None:
                x[:, c] = matrix[:, i]
        x[:, -1] = [self._kind_codes.get(k, -1) for k in kinds]
        return [float(s) for s in self.booster.predict(x, num_threads=1)]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / MODEL_FILE))
        (folder / META_FILE).write_text(json.dumps({"names": self.names, "kinds": self.kinds} | self.meta))
        if self.heldout is not None:
            np.savez_compressed(folder / HELDOUT_FILE, **self.heldout.to_npz())

    @classmethod
    def load(cls, folder: Path) -> LambdaMartRanker:
        import lightgbm as lgb

        for name in (MODEL_FILE, META_FILE):
            if not (folder / name).is_file():
                raise FailedPrecondition(f"model folder {folder}: {name} is missing", field="path")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            booster = lgb.Booster(model_file=str(folder / MODEL_FILE))
        except (ValueError, lgb.basic.LightGBMError) as exc:
            raise FailedPrecondition(f"model folder {folder}: cannot load: {exc}", field="path") from exc
        names, kinds = meta.pop("names"), meta.pop("kinds")
        return cls(booster, names, kinds, meta)


def train_ranker(
    registry: Any, name: str, policy: str, params: LambdaMartParams, since: float = 0.0,
    progress: Callable[[str, int, int], None] | None = None, heldout_pages: int = 20_000,
) -> tuple[int, dict[str, Any]]:
    """Trains on the policy's logged pages (the training share), keeps its most recent held-out pages
    for the gate, and registers the version under ``name``: (version, its figures)."""
    from ltrr_server.ranking.pagelog import read_pages

    def pages_read(n: int) -> None:
        if progress is not None:
            progress("reading pages", n, 0)

    pages = read_pages(registry.engine, policy, since, "train", pages_read)
    ranker = LambdaMartRanker.train(pages, params, progress)
    heldout = read_pages(registry.engine, policy, since, "heldout")
    if len(heldout.groups) > heldout_pages:
        keep = len(heldout.groups) - heldout_pages
        drop = sum(heldout.groups[:keep])
        heldout = LoggedPages(heldout.names, heldout.rows[drop:], heldout.kinds[drop:], heldout.labels[drop:],
                              heldout.positions[drop:], heldout.groups[keep:], heldout.event_ids[keep:])
    ranker.heldout = heldout
    figures = compare(None, ranker, heldout) if heldout.engaged_pages() else {"heldout_pages": 0.0}
    ranker.meta |= {"policy": policy, "since": since} | figures
    version = registry.register(name, "ranker", ranker, ranker.meta)
    return version, ranker.meta


def order_scores(ranker: LambdaMartRanker | None, pages: LoggedPages) -> list[list[float]]:
    """Per page, each shown item's score (None: the logged order, best first)."""
    out, start = [], 0
    matrix = pages.matrix
    for size in pages.groups:
        if ranker is None:
            out.append([-float(k) for k in range(size)])
        else:
            out.append(ranker.score(matrix[start:start + size], pages.names, pages.kinds[start:start + size]))
        start += size
    return out


def compare(live: LambdaMartRanker | None, candidate: LambdaMartRanker, pages: LoggedPages) -> dict[str, float]:
    """Both versions on held-out pages with an engagement: how often each puts an engaged item
    first, each engagement weighted by 1/θ of the position it was shown at (θ_k = 1/k: an item
    engaged with at position 5 says more than one at position 1), and the negative flip rate:
    the share of those pages where the live version put an engaged item first and the candidate
    does not."""
    new, old = order_scores(candidate, pages), order_scores(live, pages) if live is not None else None
    hits_new = hits_old = flips = weight_total = 0.0
    both_live = 0
    start = 0
    for p, size in enumerate(pages.groups):
        labels = pages.labels[start:start + size]
        positions = pages.positions[start:start + size]
        start += size
        engaged = [k for k, g in enumerate(labels) if g > 0]
        if not engaged:
            continue
        weight = float(np.mean([positions[k] + 1.0 for k in engaged]))
        weight_total += weight
        top_new = max(range(size), key=new[p].__getitem__)
        hit_new = labels[top_new] > 0
        hits_new += weight * hit_new
        if old is not None:
            top_old = max(range(size), key=old[p].__getitem__)
            hit_old = labels[top_old] > 0
            hits_old += weight * hit_old
            if hit_old:
                both_live += 1
                flips += not hit_new
    total = weight_total or 1.0
    out = {"heldout_pages": float(len(pages.groups)), "top1_engaged_new": hits_new / total}
    if old is not None:
        out |= {"top1_engaged_live": hits_old / total,
                "negative_flip_rate": flips / both_live if both_live else 0.0}
    return out
