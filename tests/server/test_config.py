"""Configuration: TOML, environment and flags, and errors that name the field."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from ltrr_server.config import Limits, PolicySpec, Settings, load_settings, settings_from_toml, unknown_env
from ltrr_server.errors import InvalidArgument


def test_embedded_demo_config_is_valid() -> None:
    s = load_settings(env={})
    assert (s.db_url, s.grpc_port, s.metrics_port) == ("sqlite:///ltrr.db", 50051, 9464)
    assert [p.name for p in s.policies] == ["demo", "retrieval"]
    assert [a.id for a in s.policies[0].actions] == ["news", "sports", "music", "movies"]
    # What each table sets: a restart applies the file's changes to those, not to defaults.
    assert set(s.policy_fields) == {"demo", "retrieval"}
    assert {"name", "actions"} <= set(s.policy_fields["demo"]) and "power_t" not in s.policy_fields["demo"]
    r = s.retrieval
    assert r.enabled and r.policies == ("retrieval",) and r.demo_items == 100_000
    assert [(st.name, st.budgets) for st in r.strategies] == [
        ("lexical", (0, 10, 50, 200)), ("vector", (0, 10, 50, 200)), ("memory", (0, 10, 50)), ("explore", (0, 10, 20))]


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\ndb_url = "sqlite:///from-file.db"\ngrpc_port = 6000\nmetrics_port = 6001\n')
    s = load_settings(cfg, env={"LTRR_GRPC_PORT": "7000", "LTRR_DB_URL": "postgresql://u@h/db"}, metrics_port=-1)
    assert (s.db_url, s.grpc_port, s.metrics_port) == ("postgresql://u@h/db", 7000, -1)


def test_toml_actions_with_features() -> None:
    s = settings_from_toml('''
[[policies]]
name = "p"
[[policies.actions]]
id = "a"
features = { item = { genre = "jazz", year = 1959 } }
''')
    assert s.policies[0].actions[0].features == [("item", [("genre", "jazz"), ("year", 1959.0)])]


@pytest.mark.parametrize("toml,field", [
    ('[server]\ngrpc_port = 70000', "server.grpc_port"),
    ('[server]\nnope = 1', "server.nope"),
    ('[server]\nlearner_nice = 20', "server.learner_nice"),
    ('[server]\nlearner_nice = -1', "server.learner_nice"),
    ('[server]\nlearner_nice = true', "server.learner_nice"),
    ('[server]\nwriter_process = "yes"', "server.writer_process"),
    ('[limits]\nmax_actions = 0', "limits.max_actions"),
    ('[limits]\nmax_things = 3', "limits.max_things"),
    ('[whatever]\n', "whatever"),
    ('[[policies]]\nname = "p"\nexploration = "greedy"', "spec.exploration"),
    ('[[policies]]\nname = "p"\nkind = "slates"', "spec.kind"),
    ('[[policies]]\nname = "p"\naggregation = "mean"', "spec.aggregation"),
    ('[[policies]]\nname = "p"\nflavour = 1', "policies[0].flavour"),
    ('[[policies]]\nepsilon = 0.1', "policies[0].name"),
    ('[[policies]]\nname = "p"\n[[policies]]\nname = "p"', "policies[1].name"),
    ('[[policies]]\nname = "p"\n[[policies.actions]]\nfeatures = {}', "policies[0].actions[0].id"),
    ('[server\n', "config"),
    ('[retrieval]\nflavour = 1', "retrieval.flavour"),
    ('[retrieval]\ncost_per_candidate = -1', "retrieval.cost_per_candidate"),
    ('[retrieval]\npolicies = ["r"]', "retrieval.strategies"),
    ('[retrieval.ranking]\nranker = "lambdamart"', "retrieval.ranking.ranker"),
    ('[retrieval.ranking]\nranker = "model:"', "retrieval.ranking.ranker"),
    ('[retrieval.ranking]\npage_size = 0', "retrieval.ranking.page_size"),
    ('[retrieval.ranking]\npage_size = 101', "retrieval.ranking.page_size"),
    ('[retrieval.ranking]\npage_size = "10"', "retrieval.ranking.page_size"),
    ('[retrieval.ranking]\nexplore = 1.5', "retrieval.ranking.explore"),
    ('[retrieval.ranking]\nexplore_depth = 1', "retrieval.ranking.explore_depth"),
    ('[retrieval.ranking]\nfeatures = ["item", "colour"]', "retrieval.ranking.features[1]"),
    ('[retrieval.ranking]\nfeatures = "item"', "retrieval.ranking.features"),
    ('[retrieval.ranking]\nlearning_rate = 0', "retrieval.ranking.learning_rate"),
    ('[retrieval.ranking]\nmin_examination = 0', "retrieval.ranking.min_examination"),
    ('[retrieval.ranking]\npage_reward = 1', "retrieval.ranking.page_reward"),
    ('[retrieval.ranking]\nmax_users = 0', "retrieval.ranking.max_users"),
    ('[retrieval.ranking]\nflavour = 1', "retrieval.ranking.flavour"),
    ('[retrieval]\nranking = 3', "retrieval.ranking"),
    ('[retrieval.strategies.lexical]\npopularity_prior = 1', "retrieval.strategies.lexical.budgets"),
    ('[retrieval.strategies.lexical]\nbudgets = [0, -5]', "retrieval.strategies.lexical.budgets[1]"),
    ('[retrieval.strategies.lexical]\nbudgets = [10, 10]', "retrieval.strategies.lexical.budgets"),
    ('[retrieval.strategies.lexical]\nbudgets = []', "retrieval.strategies.lexical.budgets"),
    ('[retrieval]\npolicies = ["r"]\n[retrieval.strategies.lexical]\nbudgets = [0, 10]', "retrieval.policies[0]"),
    ('[[policies]]\nname = "r"\nkind = "ccb"\n[retrieval]\npolicies = ["r"]\n'
     '[retrieval.strategies.lexical]\nbudgets = [0, 10]', "retrieval.policies[0]"),
    ('[[policies]]\nname = "r"\nmode = "apprentice"\n[retrieval]\npolicies = ["r"]\n'
     '[retrieval.strategies.lexical]\nbudgets = [0, 10]', "retrieval.policies[0]"),
], ids=lambda v: v if "." in v or v in ("whatever", "config") else None)
def test_invalid_configuration_names_the_field(toml: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        settings_from_toml(toml)
    assert err.value.field == field or field in str(err.value)


@pytest.mark.parametrize(("env", "field"), [
    ({"LTRR_GRPC_PORT": "fifty"}, "LTRR_GRPC_PORT"),
    ({"LTRR_INSECURE": "maybe"}, "LTRR_INSECURE"),
    ({"LTRR_MAX_NFR": "low"}, "LTRR_MAX_NFR"),
    ({"LTRR_LIMITS__MAX_ACTIONS": "1.5"}, "LTRR_LIMITS__MAX_ACTIONS"),
    ({"LTRR_LIMITS__MAX_ACTIONS": "-3"}, "limits.max_actions"),  # parsed, then checked like the file's
    ({"LTRR_RETRIEVAL__POLICIES": "[oops"}, "LTRR_RETRIEVAL__POLICIES"),
    ({"LTRR_RETRIEVAL__POLICIES": '["nope"]'}, "retrieval.policies[0]"),
    ({"LTRR_AUTH": "maybe"}, "auth"),
])
def test_bad_environment_value_names_the_variable_or_setting(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_settings(env=env)
    assert field in str(err.value)


def test_every_setting_comes_from_the_environment_by_one_rule() -> None:
    """LTRR_<KEY> for [server], LTRR_<SECTION>__<KEY> for the others; an unknown LTRR_ variable is
    named by unknown_env (ltrr serve logs it), the clients' own are not."""
    env = {"LTRR_SNAPSHOT_INTERVAL_SECONDS": "7.5", "LTRR_REFLECTION": "off", "LTRR_MODEL_DIR": "/m",
           "LTRR_LIMITS__MAX_POLICIES": "3", "LTRR_RETRIEVAL__RRF_K": "30", "LTRR_RETRIEVAL__DEMO_ITEMS": "0",
           "LTRR_GRPC_PROT": "1", "LTRR_TARGET": "h:1", "LTRR_API_KEY": "k"}
    s = load_settings(env=env)
    assert (s.snapshot_interval_seconds, s.reflection, s.model_dir) == (7.5, False, "/m")
    assert (s.limits.max_policies, s.retrieval.rrf_k, s.retrieval.demo_items) == (3, 30.0, 0)
    assert unknown_env(env) == ["LTRR_GRPC_PROT"]
    file_default = load_settings(env={})
    assert file_default.limits.max_policies == Limits().max_policies  # the environment changed only what it named


@pytest.mark.parametrize("exploration,expected", [
    ("epsilon", ["--epsilon", "0.05"]),
    ("softmax", ["--softmax", "--lambda", "10.0"]),
    ("bag", ["--bag", "4", "--epsilon", "0.05"]),
    ("cover", ["--cover", "4", "--epsilon", "0.05"]),
    ("squarecb", ["--squarecb", "--gamma_scale", "20.0"]),
    ("rnd", ["--rnd", "4", "--epsilon", "0.05"]),
])
def test_every_exploration_builds_a_working_vw_model(exploration: str, expected: list[str]) -> None:
    from ltrr_server.policy.model import PolicyModel

    spec = PolicySpec(name="p", exploration=exploration, interactions=("uA",))
    args = spec.vw_args()
    assert args[1:1 + len(expected)] == expected
    m = PolicyModel.create(spec)
    m.learn_one("shared |user s=a", ["|A id=x", "|A id=y"], [(0, -1.0, 0.5)])
    [probs] = m.predict_one("shared |user s=a", ["|A id=x", "|A id=y"])
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_settings_reject_duplicate_policies() -> None:
    with pytest.raises(InvalidArgument, match=r"policies\[1\]\.name"):
        Settings(policies=(PolicySpec(name="a"), PolicySpec(name="a")))


def test_the_documented_xmr_configuration_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "retrieval-xmr.toml"
    s = load_settings(path, env={})
    xmr = [st for st in s.retrieval.strategies if st.kind == "xmr"]
    assert len(xmr) == 1 and xmr[0].params == {"model": "music"}


def test_a_spec_that_says_nothing_gets_the_suites_defaults() -> None:
    from ltrr.v1 import admin_pb2
    from ltrr_server.api.convert import spec_from_proto, spec_to_proto

    spec = spec_from_proto(admin_pb2.PolicySpec(name="p"), Limits())
    assert (spec.exploration, spec.squarecb_gamma_scale, spec.interactions, spec.power_t, spec.cb_type) == \
        ("squarecb", 20.0, ("::", "::A"), 0.25, "dm")
    assert spec.vw_args()[-3:] == ["--power_t", "0.25", "--quiet"]
    # Said explicitly, kept, and given back as it was said.
    said = spec_from_proto(admin_pb2.PolicySpec(name="p", interactions=["uA"], power_t=0.0,
                                                cb_type=admin_pb2.CB_TYPE_MTR), Limits())
    assert (said.interactions, said.power_t, said.cb_type) == (("uA",), 0.0, "mtr")
    assert spec_from_proto(spec_to_proto(said), Limits()) == said


def test_a_spec_stored_before_power_t_keeps_its_vw_arguments() -> None:
    # Its model learned with VW's own decay: a changed argument would start a new lineage.
    from ltrr_server.log.store import _stored_spec

    stored = PolicySpec(name="p", exploration="epsilon", interactions=("uA",)).to_dict()
    del stored["power_t"], stored["cb_type"]
    spec = _stored_spec(stored)
    assert spec.power_t == 0.5 and "--power_t" not in spec.vw_args()
    assert spec.vw_args()[-5:] == ["-b", "18", "-l", "0.5", "--quiet"]
    # ... and with VW's importance weights, which a spec saying nothing no longer gets: a new lineage.
    assert spec.cb_type == "mtr"
    assert spec.learning_params() != dataclasses.replace(spec, cb_type="dm").learning_params()


def test_cb_type_must_be_one_vw_names() -> None:
    with pytest.raises(InvalidArgument, match=r"spec\.cb_type"):
        PolicySpec(name="p", cb_type="ips")


def test_reward_scale_is_a_learning_parameter_and_round_trips() -> None:
    from ltrr.v1 import admin_pb2
    from ltrr_server.api.convert import spec_from_proto, spec_to_proto

    revenue = PolicySpec(name="p", reward_scale=100.0)
    assert revenue.learning_params() != PolicySpec(name="p").learning_params()  # a change starts a new lineage
    assert settings_from_toml('[[policies]]\nname = "p"\nreward_scale = 100.0\n').policies[0] == revenue
    said = spec_from_proto(admin_pb2.PolicySpec(name="p", reward_scale=100.0), Limits())
    assert said == revenue and spec_from_proto(spec_to_proto(said), Limits()) == said
    assert spec_from_proto(admin_pb2.PolicySpec(name="p"), Limits()).reward_scale == 1.0  # unset: 1
    for bad in (0.0, -1.0, math.nan, math.inf, 1e7):
        with pytest.raises(InvalidArgument, match=r"spec\.reward_scale"):
            PolicySpec(name="p", reward_scale=bad)


def test_a_coin_betting_spec_has_no_learning_rate_or_decay() -> None:
    from ltrr.v1 import admin_pb2
    from ltrr_server.api.convert import spec_from_proto, spec_to_proto

    coin = PolicySpec(name="p", optimizer="coin")
    assert coin.vw_args()[-2:] == ["--coin", "--quiet"]
    assert "-l" not in coin.vw_args() and "--power_t" not in coin.vw_args()
    # They would change nothing it learns, so they do not start a new lineage; the optimizer does.
    assert dataclasses.replace(coin, learning_rate=2.0, power_t=0.0).learning_params() == coin.learning_params()
    assert PolicySpec(name="p").learning_params() != coin.learning_params()
    said = spec_from_proto(admin_pb2.PolicySpec(name="p", optimizer=admin_pb2.OPTIMIZER_COIN), Limits())
    assert said.optimizer == "coin" and spec_from_proto(spec_to_proto(said), Limits()) == said
    assert spec_from_proto(admin_pb2.PolicySpec(name="p"), Limits()).optimizer == "adagrad"
    assert settings_from_toml('[[policies]]\nname = "p"\noptimizer = "coin"\n').policies[0] == coin
    with pytest.raises(InvalidArgument, match=r"spec\.optimizer"):
        PolicySpec(name="p", optimizer="sgd")


def test_a_configured_policy_that_says_nothing_gets_the_same_defaults() -> None:
    settings = settings_from_toml('[[policies]]\nname = "p"\n[[policies.actions]]\nid = "a"\n')
    assert settings.policies[0].vw_args() == PolicySpec(name="p").vw_args()
    said = settings_from_toml('[[policies]]\nname = "p"\ninteractions = []\n')
    assert said.policies[0].interactions == ()
