"""DSJSON: what ltrr exports, VW's own parser reads into the examples ltrr learns; VW's fixture
files import; bad lines name what is wrong."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import vowpal_wabbit_next as vw

from ltrr_server.config import PolicySpec
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import action_line, shared_line
from ltrr_server.log.dsjson import ExportedEvent, parse_line, to_line
from ltrr_server.policy.model import PolicyModel

FIXTURES = Path(__file__).parents[2] / "fixtures" / "dsjson"
ACTIONS = [("news", [("meta", [("kind", "text"), ("len", 3.0)])]), ("sports fan:club", []),
           ("music|live", [("meta", [("kind", "audio"), ("len", 4.5)])]), ("x=y", [])]


def events(n: int, slots: int, seed: int = 0) -> list[ExportedEvent]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        context = [("user", [("segment", rng.choice(["sports fan", "a:b", "news|junkie"])), ("age", float(k % 7))]),
                   ("time", [("part", rng.choice(["morning", "night"]))])]
        probabilities, chosen = [], []
        for _ in range(slots):
            weights = [0.0 if i in chosen else rng.random() + 0.05 for i in range(len(ACTIONS))]
            total = sum(weights)
            probs = [w / total for w in weights]
            idx = rng.choices(range(len(ACTIONS)), weights=probs)[0]
            probabilities.append(probs)
            chosen.append(idx)
        out.append(ExportedEvent(f"e{k}", 1_790_000_000.0 + k, context, ACTIONS, probabilities, chosen,
                                 float(rng.random() < 0.5)))
    return out


@pytest.mark.parametrize("kind,slots", [("cb", 1), ("ccb", 3)])
def test_vws_parser_reads_an_export_into_the_examples_ltrr_learns(kind: str, slots: int) -> None:
    """Two models, one learning each line through VW's DSJSON parser, one through ltrr's own
    examples of the same decisions: the same features (the same weights set, a feature hashed
    differently would set others) with the same values, up to float rounding (VW's JSON parser
    orders namespaces its own way, and the interactions' sums differ in their last bits)."""
    # mtr: VW learns a DSJSON line with its logged probability, as ltrr's mtr does (dm would give it 1).
    spec = PolicySpec(name="p", kind=kind, slots=slots, exploration="epsilon", interactions=("::", "::A"),
                      cb_type="mtr")
    ours = PolicyModel.create(spec)
    theirs = vw.Workspace(spec.vw_args() + ["--dsjson"])
    parser = vw.DSJsonFormatParser(theirs)
    for ev in events(300, slots):
        shared = shared_line(ev.context)
        lines = [action_line(a, f) for a, f in ev.actions]
        ours.learn_one(shared, lines, [(i, -ev.reward, ev.probabilities[s][i]) for s, i in enumerate(ev.chosen)],
                       slots)
        theirs.learn_one(parser.parse_json(to_line(ev)))
    a, b = np.asarray(ours._ws.weights()), np.asarray(theirs.weights())
    assert np.count_nonzero(a) > 100
    assert np.array_equal(a != 0, b != 0)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(a).max())


@pytest.mark.parametrize("slots", [1, 3])
def test_an_export_imports_as_the_same_decision(slots: int) -> None:
    """The same ids, probabilities and reward; the same features as VW reads them (an export writes
    names and values as VW's text format escapes them: "sports fan" comes back "sports_fan")."""
    for ev in events(50, slots, seed=3):
        back = parse_line(to_line(ev))
        assert back.event_id == ev.event_id and back.created_at == pytest.approx(ev.created_at)
        assert shared_line(back.context) == shared_line(ev.context)
        assert back.action_ids == [a for a, _ in ev.actions]
        assert [action_line(a, f) for a, f in zip(back.action_ids, back.action_features, strict=True)] == \
            [action_line(a, f) for a, f in ev.actions]
        assert back.chosen == ev.chosen
        np.testing.assert_allclose(back.probabilities, ev.probabilities, rtol=1e-12)
        assert back.reward == pytest.approx(ev.reward * slots)  # a multi-slot line carries a cost per slot


def test_vws_fixture_files_import() -> None:
    cb = [parse_line(line) for line in (FIXTURES / "dsjson_cb.json").read_text().splitlines()]
    assert len(cb) == 23
    first = cb[0]
    assert first.event_id == "13118d9b4c114f8485d9dec417e3aefe"
    assert first.action_ids == ["Cappucino", "Cold brew", "Iced mocha", "Latte"]
    # "a" ranks the actions, the chosen first, and "p" follows it: action 4 was drawn with 0.05.
    assert first.chosen == [3] and first.probabilities == [[0.05, 0.05, 0.85, 0.05]] and first.reward == 0.0
    assert ("FromUrl", [("timeofday", "Afternoon"), ("weather", "Sunny"), ("name", "Cathy")]) in first.context
    assert first.action_features[0] == [("i", [("constant", 1.0), ("id", "Cappucino")]),
                                        ("j", [("type", "hot"), ("origin", "kenya"), ("organic", "yes"),
                                               ("roast", "dark")])]
    assert sum(e.reward or 0 for e in cb) == sum(
        -json.loads(line)["_label_cost"] for line in (FIXTURES / "dsjson_cb.json").read_text().splitlines())

    default_ns = [parse_line(line) for line in (FIXTURES / "dsjson_cb_default_ns.json").read_text().splitlines()]
    assert default_ns[0].context[0] == ("default", [("timeofday", "Afternoon"), ("weather", "Sunny"),
                                                    ("name", "Cathy")])

    service = [parse_line(line) for line in (FIXTURES / "decisionservice.json").read_text().splitlines()]
    assert [len(set(e.action_ids)) for e in service] == [12, 12, 12]
    assert service[0].action_ids[8].endswith("fight#9")  # the service logged that article twice
    assert service[0].reward == 1.0 and service[1].reward == 0.0
    geo = dict(service[0].context)["Geo"]
    assert ("city", "New Orleans") in geo and not any(name.startswith("_") for name, _ in geo)

    ccb = [parse_line(line) for line in (FIXTURES / "ccb_data.json").read_text().splitlines()]
    assert len(ccb) == 59
    assert ccb[1].chosen == [1, 3] and ccb[1].reward == pytest.approx(1.0)  # slots of 0.6 and 0.4
    assert ccb[0].reward == 0.0  # no observation: the service joined it with a cost of 0
    assert ccb[1].probabilities[1][3] == pytest.approx(1 / 3) and ccb[1].probabilities[1][1] == 0.0


GOOD = json.loads((FIXTURES / "dsjson_cb.json").read_text().splitlines()[1])


def _nested(depth: int) -> dict[str, object]:
    obj: dict[str, object] = {"f": 1}
    for _ in range(depth):
        obj = {"n": obj}
    return obj


def changed(**fields: object) -> str:
    line = json.loads(json.dumps(GOOD))
    for key, value in fields.items():
        if value is None:
            line.pop(key, None)
        else:
            line[key] = value
    return json.dumps(line)


@pytest.mark.parametrize("text,field", [
    ("{not json", "line: not JSON"),
    ("[1, 2]", "line: not a JSON object"),
    (changed(EventId=None), "EventId: missing"),
    (changed(c=None), "c: missing"),
    (changed(c={"x": {"a": 1}, "_multi": []}), "c._multi: missing or empty"),
    (changed(a=[1, 2, 3]), "a: needs the ranked actions"),
    (changed(a=[1, 2, 3, 9]), "a[3]: action 9 is not one of the 4 actions"),
    (changed(p=[0.5, 0.5, 0.5, 0.5]), "a: probabilities must be >= 0 and sum to 1"),
    (changed(_labelIndex=7), "_labelIndex: must be an action index below 4"),
    (changed(_label_cost="high"), "_label_cost: must be a finite number"),
    (changed(_label_cost=1e300), "_label_cost: must be within"),
    (changed(Timestamp="yesterday"), "Timestamp: not an ISO 8601 time"),
    (changed(pdrop=0.1), "pdrop"),
    (changed(c={"u": {"age": 1e30}, "_multi": GOOD["c"]["_multi"]}), "c.u.age: must be within"),
    (changed(c={"_multi": [{"_tag": "a"}, {"_tag": ""}]}, a=[1, 2], p=[0.5, 0.5]),
     "c._multi[1].id: action id is empty"),
    (changed(p=[0.0, 0.5, 0.25, 0.25]), "slot 0: the chosen action has probability 0"),
    ("[" * 100_000, "line: nested too deeply to read"),
    (changed(c={"u": _nested(17), "_multi": GOOD["c"]["_multi"]}), "features nested more than 16 objects deep"),
], ids=["not json", "not an object", "no event id", "no context", "no actions", "short ranking", "unknown action",
        "probabilities", "label index", "cost not a number", "cost too large", "timestamp", "pdrop",
        "feature too large", "empty action id", "chosen with probability 0", "JSON nested too deeply",
        "features nested too deeply"])
def test_bad_lines_say_what_is_wrong(text: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_line(text)
    assert field in err.value.message
