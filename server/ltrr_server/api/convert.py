"""Proto messages <-> core types. Validation errors name the request field."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from ltrr.v1 import admin_pb2, common_pb2, decisions_pb2, feedback_pb2
from ltrr_server.bounds import ID_CHARS, REQUEST_ID_CHARS, SPEC_FIELDS
from ltrr_server.config import ActionSpec, Limits, PolicySpec
from ltrr_server.core.decisions import Decision
from ltrr_server.core.policies import PolicyInfo
from ltrr_server.core.rewards import RewardInput, RewardResult
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import Namespaces, validate_namespaces
from ltrr_server.log.joiner import Outcome
from ltrr_server.tenancy import outside

_KINDS = {admin_pb2.POLICY_KIND_CB: "cb", admin_pb2.POLICY_KIND_CCB: "ccb"}
_EXPLORATIONS = {
    admin_pb2.EXPLORATION_EPSILON: "epsilon", admin_pb2.EXPLORATION_SOFTMAX: "softmax",
    admin_pb2.EXPLORATION_BAG: "bag", admin_pb2.EXPLORATION_COVER: "cover",
    admin_pb2.EXPLORATION_SQUARECB: "squarecb", admin_pb2.EXPLORATION_RND: "rnd",
}
_AGGREGATIONS = {admin_pb2.AGGREGATION_FIRST: "first", admin_pb2.AGGREGATION_SUM: "sum",
                 admin_pb2.AGGREGATION_MAX: "max"}
_MODES = {admin_pb2.POLICY_MODE_ONLINE: "online", admin_pb2.POLICY_MODE_APPRENTICE: "apprentice"}
_CB_TYPES = {admin_pb2.CB_TYPE_DM: "dm", admin_pb2.CB_TYPE_MTR: "mtr"}
_OPTIMIZERS = {admin_pb2.OPTIMIZER_ADAGRAD: "adagrad", admin_pb2.OPTIMIZER_COIN: "coin"}
_STATUS = {
    Outcome.ACCEPTED: feedback_pb2.REWARD_STATUS_ACCEPTED,
    Outcome.DUPLICATE: feedback_pb2.REWARD_STATUS_DUPLICATE,
    Outcome.LATE: feedback_pb2.REWARD_STATUS_LATE,
    Outcome.UNKNOWN: feedback_pb2.REWARD_STATUS_UNKNOWN_EVENT,
    Outcome.INVALID: feedback_pb2.REWARD_STATUS_INVALID,
}


def check_request_id(request_id: str) -> None:
    if len(request_id) > REQUEST_ID_CHARS:
        raise InvalidArgument("request_id", f"longer than {REQUEST_ID_CHARS} characters")


def namespaces(msgs: Sequence[common_pb2.Namespace], field: str, max_features: int) -> Namespaces:
    # Sliced, not iterated: a protobuf repeated field iterates by index until IndexError, and
    # raising that (once per namespace and once for the list) cost more than reading the fields.
    return validate_namespaces(
        [
            (ns.name, [
                (f.name, f.str if f.HasField("str") else None, f.num if f.HasField("num") else None)
                for f in ns.features[:]
            ])
            for ns in msgs[:]
        ],
        field, max_features,
    )


def actions(msgs: Sequence[common_pb2.Action], field: str, max_features: int) -> list[ActionSpec]:
    return [ActionSpec(a.id, namespaces(a.features, f"{field}[{i}].features", max_features))
            for i, a in enumerate(msgs[:])]  # sliced, as in ``namespaces``


def namespaces_to_proto(ns: Namespaces) -> list[common_pb2.Namespace]:
    return [common_pb2.Namespace(name=name, features=[
        common_pb2.Feature(name=f, str=v) if isinstance(v, str) else common_pb2.Feature(name=f, num=v)
        for f, v in feats
    ]) for name, feats in ns]


def decision_to_proto(d: Decision, request_id: str = "") -> decisions_pb2.DecideResponse:
    """The response as messages (the decision path writes one-slot answers as bytes: ``decision_wire``)."""
    slots = [
        decisions_pb2.SlotDecision(
            chosen_action_id=d.action_ids[s.chosen], probability=s.probability,
            probabilities=[decisions_pb2.ActionProbability(action_id=a, probability=p)
                           for a, p in zip(d.action_ids, s.probabilities, strict=True)],
        )
        for s in d.slots
    ]
    first = slots[0]
    return decisions_pb2.DecideResponse(
        event_id=d.event_id, chosen_action_id=first.chosen_action_id, probability=first.probability,
        probabilities=first.probabilities, slots=slots if len(slots) > 1 else (), model_version=d.model_version,
        request_id=request_id,
    )


def reward_input(ev: feedback_pb2.RewardEvent) -> RewardInput:
    engaged = ev.engaged_item_ids
    return RewardInput(
        ev.event_id, ev.reward_id, ev.value, list(engaged) if engaged else [],
        ev.oracle_best_value if ev.HasField("oracle_best_value") else None,
        ev.oracle_chosen_value if ev.HasField("oracle_chosen_value") else None,
    )


def reward_ack(r: RewardInput, result: RewardResult) -> feedback_pb2.RewardAck:
    return feedback_pb2.RewardAck(event_id=r.event_id, reward_id=r.reward_id, status=_STATUS[result.outcome],
                                  message=result.message)


def reward_acks(rewards: Sequence[RewardInput], results: Sequence[RewardResult]) -> feedback_pb2.RewardAckBatch:
    """The acks of a batch, built in place (a list of acks handed to the batch would be copied)."""
    out = feedback_pb2.RewardAckBatch()
    add = out.acks.add
    for r, result in zip(rewards, results, strict=True):
        if result.message:
            add(event_id=r.event_id, reward_id=r.reward_id, status=_STATUS[result.outcome], message=result.message)
        else:
            add(event_id=r.event_id, reward_id=r.reward_id, status=_STATUS[result.outcome])
    return out


def spec_from_proto(s: admin_pb2.PolicySpec, limits: Limits) -> PolicySpec:
    """A policy spec from a request; bounded like the configuration (``PolicySpec``) and by ``limits``."""
    defaults = PolicySpec(name="defaults")
    if len(s.actions) > limits.max_actions:
        raise InvalidArgument("spec.actions", f"{len(s.actions)} actions, more than limits.max_actions="
                                              f"{limits.max_actions}")
    kind = _KINDS.get(s.kind, "cb") if s.kind else "cb"
    if s.kind and s.kind not in _KINDS:
        raise InvalidArgument("spec.kind", f"unknown kind {s.kind}")
    if s.exploration and s.exploration not in _EXPLORATIONS:
        raise InvalidArgument("spec.exploration", f"unknown exploration {s.exploration}")
    if s.aggregation and s.aggregation not in _AGGREGATIONS:
        raise InvalidArgument("spec.aggregation", f"unknown aggregation {s.aggregation}")
    if s.mode and s.mode not in _MODES:
        raise InvalidArgument("spec.mode", f"unknown mode {s.mode}")
    if s.cb_type and s.cb_type not in _CB_TYPES:
        raise InvalidArgument("spec.cb_type", f"unknown cb_type {s.cb_type}")
    if s.optimizer and s.optimizer not in _OPTIMIZERS:
        raise InvalidArgument("spec.optimizer", f"unknown optimizer {s.optimizer}")
    return PolicySpec(
        name=s.name, kind=kind,
        exploration=_EXPLORATIONS.get(s.exploration, defaults.exploration),
        epsilon=s.epsilon if s.HasField("epsilon") else defaults.epsilon,
        softmax_lambda=s.softmax_lambda or defaults.softmax_lambda,
        ensemble_size=s.ensemble_size or defaults.ensemble_size,
        squarecb_gamma_scale=s.squarecb_gamma_scale or defaults.squarecb_gamma_scale,
        interactions=tuple(s.interactions) or defaults.interactions,
        actions=tuple(actions(s.actions, "spec.actions", limits.max_features)),
        join_window_seconds=s.join_window_seconds or defaults.join_window_seconds,
        default_reward=s.default_reward,
        aggregation=_AGGREGATIONS.get(s.aggregation, defaults.aggregation),
        slots=s.slots or (1 if kind == "cb" else 2),
        description=s.description,
        bits=s.bits or defaults.bits,
        learning_rate=s.learning_rate or defaults.learning_rate,
        power_t=s.power_t if s.HasField("power_t") else defaults.power_t,
        cb_type=_CB_TYPES.get(s.cb_type, defaults.cb_type),
        optimizer=_OPTIMIZERS.get(s.optimizer, defaults.optimizer),
        reward_scale=s.reward_scale or defaults.reward_scale,
        mode=_MODES.get(s.mode, defaults.mode),
        retention_days=s.retention_days,
    )


def spec_to_proto(spec: PolicySpec) -> admin_pb2.PolicySpec:
    kinds = {v: k for k, v in _KINDS.items()}
    expl = {v: k for k, v in _EXPLORATIONS.items()}
    aggs = {v: k for k, v in _AGGREGATIONS.items()}
    modes = {v: k for k, v in _MODES.items()}
    cb_types = {v: k for k, v in _CB_TYPES.items()}
    optimizers = {v: k for k, v in _OPTIMIZERS.items()}
    return admin_pb2.PolicySpec(
        name=outside(spec.name), kind=kinds[spec.kind], exploration=expl[spec.exploration], epsilon=spec.epsilon,
        softmax_lambda=spec.softmax_lambda, ensemble_size=spec.ensemble_size,
        squarecb_gamma_scale=spec.squarecb_gamma_scale, interactions=list(spec.interactions),
        actions=[common_pb2.Action(id=a.id, features=namespaces_to_proto(a.features)) for a in spec.actions],
        join_window_seconds=spec.join_window_seconds, default_reward=spec.default_reward,
        aggregation=aggs[spec.aggregation], slots=spec.slots, description=spec.description, bits=spec.bits,
        learning_rate=spec.learning_rate, power_t=spec.power_t, mode=modes[spec.mode],
        retention_days=spec.retention_days, cb_type=cb_types[spec.cb_type],
        optimizer=optimizers[spec.optimizer], reward_scale=spec.reward_scale,
    )


# PolicySpec's field names, as a plain dict: the descriptor's own map reads a name only up to a
# NUL, so it took "name\x00" for "name" (found from outside: INTERNAL instead of naming the path).
_SPEC_FIELD_NAMES = dict.fromkeys(f.name for f in admin_pb2.PolicySpec.DESCRIPTOR.fields)


def update_paths(change: admin_pb2.PolicySpec, paths: Sequence[str]) -> tuple[str, ...] | None:
    """The fields an UpdatePolicy changes (AIP-134's update mask): those ``paths`` names; no paths,
    those ``change`` sets; ``None`` for ``["*"]``, the whole spec.

    >>> update_paths(admin_pb2.PolicySpec(name="p", mode=admin_pb2.POLICY_MODE_ONLINE), [])
    ('name', 'mode')
    >>> update_paths(admin_pb2.PolicySpec(name="p"), ["name\\x00"])
    Traceback (most recent call last):
    ...
    ltrr_server.errors.InvalidArgument: update_mask.paths[0]: 'name\\x00' is not a PolicySpec field ...
    >>> update_paths(admin_pb2.PolicySpec(name="p"), ["model"])
    Traceback (most recent call last):
    ...
    ltrr_server.errors.InvalidArgument: update_mask.paths[0]: 'model' is not a PolicySpec field ...
    """
    if len(paths) > SPEC_FIELDS:
        raise InvalidArgument("update_mask.paths", f"{len(paths)} paths, more than PolicySpec's {SPEC_FIELDS} fields")
    for i, path in enumerate(paths):
        if len(path) > ID_CHARS:
            raise InvalidArgument(f"update_mask.paths[{i}]", f"{len(path)} characters, more than {ID_CHARS}")
        if path not in _SPEC_FIELD_NAMES and not (path == "*" and len(paths) == 1):
            raise InvalidArgument(f"update_mask.paths[{i}]", f"{path!r} is not a PolicySpec field ("
                                  f"{', '.join(_SPEC_FIELD_NAMES)}; or \"*\" alone: the whole spec)")
    if list(paths) == ["*"]:
        return None
    return tuple(paths) if paths else tuple(f.name for f, _ in change.ListFields())


def spec_update(current: PolicySpec, change: admin_pb2.PolicySpec, paths: Sequence[str] | None
                ) -> admin_pb2.PolicySpec:
    """``current`` with the fields ``paths`` names taken from ``change`` (``None``: ``change``).

    A caller switching an apprentice online sends ``{name, mode}``: replacing the whole spec with
    it dropped the policy's actions, and reset a model learned under non-default settings.

    >>> live = PolicySpec(name="p", learning_rate=0.1, actions=(ActionSpec("a"), ActionSpec("b")))
    >>> out = spec_update(live, admin_pb2.PolicySpec(name="p", mode=admin_pb2.POLICY_MODE_ONLINE), ["mode"])
    >>> [a.id for a in out.actions], out.learning_rate, out.mode == admin_pb2.POLICY_MODE_ONLINE
    (['a', 'b'], 0.1, True)
    >>> len(spec_update(live, admin_pb2.PolicySpec(name="p"), ["actions"]).actions)
    0
    """
    if paths is None:
        return change
    fields = admin_pb2.PolicySpec.DESCRIPTOR.fields_by_name
    out = spec_to_proto(current)
    message: Message = out  # paths are field names checked against the descriptor (update_paths)
    for path in paths:
        if path == "name":
            continue
        message.ClearField(path)
        if fields[path].is_repeated:
            getattr(out, path).extend(getattr(change, path))
        elif not fields[path].has_presence or change.HasField(path):  # type: ignore[arg-type]
            setattr(out, path, getattr(change, path))
    return out


def policy_to_proto(info: PolicyInfo) -> admin_pb2.Policy:
    return admin_pb2.Policy(
        spec=spec_to_proto(info.spec), revision=info.revision, lineage=info.lineage,
        model_version=info.model_version, created_at_ms=int(info.created_at * 1000),
        updated_at_ms=int(info.updated_at * 1000),
    )

