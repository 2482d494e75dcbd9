"""The estimators: their textbook formulas, Open Bandit Pipeline's results on the Open Bandit
Dataset sample (through the server too), and the coverage of their 95% intervals."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from ltrr.v1 import admin_pb2, admin_pb2_grpc
from ltrr_server.config import ActionSpec, PolicySpec
from ltrr_server.log import db
from ltrr_server.log import schema as t
from ltrr_server.ope import estimators as est
from tests.conftest import server_settings

OBD = Path(__file__).parents[2] / "fixtures" / "obd"
N_ITEMS = 80


@pytest.mark.parametrize("r,w,q,qt,expected", [
    # (rewards, weights, q of the logged action, q under the target): ips, snips, dr
    ([1, 0, 1, 0], [2, 0.5, 0.5, 1], [0.5] * 4, [0.5] * 4, (0.625, 0.625, 0.625)),
    ([1, 1], [0, 0], [0.2, 0.2], [0.7, 0.7], (0.0, math.nan, 0.7)),
    ([3.0], [4.0], [1.0], [2.0], (12.0, 3.0, 10.0)),
    ([-1, 2, 0.5], [1, 1, 1], [0, 0, 0], [0, 0, 0], (0.5, 0.5, 0.5)),
], ids=["mixed", "target never logged", "one event", "on-policy"])
def test_textbook_values(r: list[float], w: list[float], q: list[float], qt: list[float],
                         expected: tuple[float, float, float]) -> None:
    a = [np.array(x, dtype=float) for x in (r, w, q, qt)]
    got = (est.ips(a[0], a[1]).value, est.snips(a[0], a[1]).value, est.dr(*a).value)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_empty_or_mismatched_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no events"):
        est.ips(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="2 rewards but 1 weights"):
        est.snips(np.zeros(2), np.zeros(1))


def obd() -> dict[str, np.ndarray]:
    with (OBD / "bts_all.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("item_id", "position", "click", "propensity_score")}


def targets(items: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The reference's target policies (tests/fixtures/obd/make_reference.py), per round."""
    n = len(items)
    out = {"uniform": np.full((n, N_ITEMS), 1 / N_ITEMS), "action:51": np.zeros((n, N_ITEMS)),
           "by position": np.zeros((n, N_ITEMS))}
    out["action:51"][:, 51] = 1.0
    ramp = np.arange(1, N_ITEMS + 1) / np.arange(1, N_ITEMS + 1).sum()
    for i, pos in enumerate(positions):
        if pos == 1:
            out["by position"][i, 51] = 1.0
        elif pos == 2:
            out["by position"][i, :10] = 0.1
        else:
            out["by position"][i] = ramp
    return out


REFERENCE = json.loads((OBD / "reference.json").read_text())["estimates"]


def test_equal_open_bandit_pipelines_results_on_the_obd_sample() -> None:
    data = obd()
    n = len(data["item_id"])
    idx = np.arange(n)
    items, positions = data["item_id"].astype(int), data["position"].astype(int)
    rates = np.array(json.loads((OBD / "random_click_rate.json").read_text()))
    q_all = rates[:, positions - 1].T  # (n, items)
    for name, dist in targets(items, positions).items():
        w = dist[idx, items] / data["propensity_score"]
        r = data["click"]
        got = {"ips": est.ips(r, w).value, "snips": est.snips(r, w).value,
               "dr": est.dr(r, w, q_all[idx, items], (dist * q_all).sum(axis=1)).value}
        for estimator, value in got.items():
            assert value == pytest.approx(REFERENCE[name][estimator], abs=1e-9, rel=1e-9), (name, estimator)


def write_obd_log(db_url: str) -> None:
    """The OBD sample as an older server would have logged it: one decision per round among the
    80 items, the round's position as context, the logged item with OBP's propensity (the rest of
    the distribution spread evenly: no estimator reads it)."""
    data = obd()
    engine = db.create_engine(db_url)
    db.migrate(engine)
    actions = json.dumps([[str(i), []] for i in range(N_ITEMS)])
    decisions, joined = [], []
    for k, (item, pos, click, p) in enumerate(zip(data["item_id"].astype(int), data["position"].astype(int),
                                                  data["click"], data["propensity_score"], strict=True)):
        probs = [(1 - p) / (N_ITEMS - 1)] * N_ITEMS
        probs[item] = p
        event_id = f"obd-{k}"
        decisions.append(dict(event_id=event_id, policy="obd", lineage=1, created_at=1_600_000_000 + k,
                              deadline=1_600_000_060 + k, context=json.dumps([["obd", [["position", str(pos)]]]]),
                              actions=actions, probabilities=json.dumps([probs]), chosen=json.dumps([int(item)]),
                              explored=False, model_version=0, learn=True))
        joined.append(dict(seq=k + 1, event_id=event_id, policy="obd", reward=float(click), n_rewards=1,
                           source="reward", joined_at=1_600_000_001 + k))
    with engine.begin() as conn:
        conn.execute(sa.insert(t.decisions), decisions)
        conn.execute(sa.insert(t.joined), joined)
    engine.dispose()


def weights(table: dict[str, float]) -> list[admin_pb2.ActionWeight]:
    return [admin_pb2.ActionWeight(action=a, weight=w) for a, w in table.items()]


def test_the_server_gives_obps_results_on_the_obd_sample(make_server: Any, db_url: str) -> None:
    write_obd_log(db_url)
    policy = PolicySpec(name="obd", exploration="epsilon", actions=tuple(ActionSpec(str(i)) for i in range(N_ITEMS)))
    server = make_server(server_settings(db_url, policy))
    ramp = {str(i): float(i + 1) for i in range(N_ITEMS)}
    table = admin_pb2.TableTarget(feature="obd.position", by_value=[
        admin_pb2.FeatureTable(value="1", weights=weights({"51": 1.0})),
        admin_pb2.FeatureTable(value="2", weights=weights({str(i): 1.0 for i in range(10)})),
        admin_pb2.FeatureTable(value="3", weights=weights(ramp))])
    request = admin_pb2.EvaluatePolicyRequest(
        name="obd", estimators=[admin_pb2.ESTIMATOR_IPS, admin_pb2.ESTIMATOR_SNIPS],
        targets=[admin_pb2.EvaluationTarget(uniform=True), admin_pb2.EvaluationTarget(action="51"),
                 admin_pb2.EvaluationTarget(table=table, name="by position")])
    stub = admin_pb2_grpc.AdminServiceStub(server.channel())
    result = list(stub.EvaluatePolicy(request, timeout=120))[-1].result
    assert result.events == 10_000
    for target in result.targets:
        (slot,) = target.slots
        for estimator in ("ips", "snips"):
            assert getattr(slot, estimator).value == pytest.approx(REFERENCE[target.name][estimator], abs=1e-6,
                                                                   rel=1e-6), (target.name, estimator)


N_CTX, N_ACT, N_EVENTS = 4, 5, 2000


def _world(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean rewards per context type and action, a logging policy favouring some actions
    (probabilities 0.04 to 0.42), a target taking the best action 90% of the time, and a reward
    model off by a quarter (for DR)."""
    means = rng.uniform(0.1, 0.9, size=(N_CTX, N_ACT))
    logging = rng.dirichlet(np.ones(N_ACT) * 0.8, size=N_CTX) * 0.8 + 0.2 / N_ACT
    target = np.full((N_CTX, N_ACT), 0.1 / (N_ACT - 1))
    target[np.arange(N_CTX), means.argmax(axis=1)] = 0.9
    return means, logging, target, means * 0.75 + 0.05


def _log(rng: np.random.Generator, means: np.ndarray, logging: np.ndarray) -> tuple[np.ndarray, ...]:
    """One run's logged contexts, actions and rewards."""
    x = rng.integers(N_CTX, size=N_EVENTS)
    a = np.array([rng.choice(N_ACT, p=logging[c]) for c in x])
    return x, a, (rng.random(N_EVENTS) < means[x, a]).astype(float)


def test_intervals_cover_the_true_value_in_at_least_90_of_100_worlds() -> None:
    """The world of ``_world``, 2,000 events a run, 100 runs."""
    rng = np.random.default_rng(2026)
    means, logging, target, q_model = _world(rng)
    truth = float(np.mean((target * means).sum(axis=1)))
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for _ in range(100):
        x, a, r = _log(rng, means, logging)
        w = target[x, a] / logging[x, a]
        for name, e in (("ips", est.ips(r, w)), ("snips", est.snips(r, w)),
                        ("dr", est.dr(r, w, q_model[x, a], (target[x] * q_model[x]).sum(axis=1)))):
            covered[name] += e.lower <= truth <= e.upper
    assert all(c >= 90 for c in covered.values()), covered


def test_paired_differences_cover_the_true_difference_and_are_narrower() -> None:
    """Two targets over the same logs of such a world: both take the best action 90% of the
    time, but in one context type of four the second takes the worst. The paired interval of
    their difference covers the true difference in at least 90 of 100 runs, and is narrower than
    the two separate intervals combined, since the two agree in the other three: 0.71 as wide
    here (paired standard error 0.026 against 0.037), the noise of the fourth being in both."""
    rng = np.random.default_rng(2027)
    means, logging, first, q_model = _world(rng)
    second = first.copy()
    second[0] = 0.1 / (N_ACT - 1)
    second[0, means[0].argmin()] = 0.9
    truth = float(np.mean(((first - second) * means).sum(axis=1)))
    assert truth > 0.01
    covered = {"ips": 0, "snips": 0, "dr": 0}
    narrower = 0
    for _ in range(100):
        x, a, r = _log(rng, means, logging)
        one, two = (_terms(target, x, a, r, logging, q_model) for target in (first, second))
        for name in covered:
            d = one[name].minus(two[name])
            assert d.value == pytest.approx(one[name].value - two[name].value, abs=1e-12)
            covered[name] += d.lower <= truth <= d.upper
        d, se1, se2 = one["snips"].minus(two["snips"]), one["snips"].estimate(), two["snips"].estimate()
        narrower += d.std_error <= 0.8 * math.hypot(se1.std_error, se2.std_error)
    assert all(c >= 90 for c in covered.values()), covered
    assert narrower == 100


def _terms(target: np.ndarray, x: np.ndarray, a: np.ndarray, r: np.ndarray, logging: np.ndarray,
           q_model: np.ndarray) -> dict[str, est.Terms]:
    w = target[x, a] / logging[x, a]
    return {"ips": est.ips_terms(r, w), "snips": est.snips_terms(r, w),
            "dr": est.dr_terms(r, w, q_model[x, a], (target[x] * q_model[x]).sum(axis=1))}


def test_a_difference_needs_the_same_events() -> None:
    with pytest.raises(ValueError, match="3 events against 2: not paired"):
        est.ips_terms(np.ones(3), np.ones(3)).minus(est.ips_terms(np.ones(2), np.ones(2)))
