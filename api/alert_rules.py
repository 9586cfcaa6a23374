"""Alert rules: which conditions fire a project's alerts (``api.alerts`` lists and streams them).

A rule's ``spec`` depends on its ``kind`` (``streams/alerting.py``). The declaration
takes any JSON object as the spec, and the document shows each kind's spec; the
processor's own ``check_rule`` then decides whether the spec is valid for its kind
(``storage.rules``), so a rule the API accepts is a rule the processor evaluates,
and one it cannot is a 422 with the reason. The processor re-reads a project's rules
at most ``RuleBook.ttl_s`` (1 s) after a change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict
from urllib.parse import urlsplit

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api import audit
from runstream.api.auth import PROJECT_READ, PROJECT_WRITE, Principal, allows
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, project_path
from runstream.api.responses import json_response
from runstream.api.schemas import Time
from runstream.events import ALERT_LEVELS
from runstream.storage import rules
from runstream.storage.errors import QueryError
from runstream.streams.alerting import OPS, RULE_KINDS, RuleError

RULES_PATH = PROJECT_PATH + "/alert-rules"
RULE_PATH = RULES_PATH + "/{rule_id}"
MAX_RULE_JSON = 64 << 10


def _spec_schemas() -> list[dict[str, Any]]:
    """Each kind's spec as JSON Schema: what ``streams.alerting.check_rule`` accepts, for clients and fuzzers."""
    name = {"type": "string", "minLength": 1, "maxLength": 256}
    positive = {"type": "number", "exclusiveMinimum": 0}
    goal = {"type": "string", "enum": ["minimize", "maximize"]}
    common = {
        "level": {"type": "string", "enum": list(ALERT_LEVELS), "default": "WARN"},
        "webhooks": {
            "type": "array",
            "items": {"type": "string", "pattern": "^https?://"},
            "description": "URLs the notifier posts this rule's alerts to, besides the global ones",
        },
    }
    compare = {"metric": name, "op": {"type": "string", "enum": list(OPS)}, "value": {"type": "number"}}
    specs: dict[str, dict[str, Any]] = {
        "threshold": {"required": ["metric", "op", "value"], "properties": compare},
        "system": {
            "required": ["metric", "op", "value", "for_seconds"],
            "properties": {**compare, "for_seconds": {"type": "number", "minimum": 0}},
        },
        "nonfinite": {"required": ["metric"], "properties": {"metric": name}},
        "divergence": {
            "required": ["metric", "percent", "within_steps"],
            "properties": {
                "metric": name,
                "percent": positive,
                "goal": goal,
                "within_steps": {"type": "integer", "minimum": 1},
            },
        },
        "stall": {
            "properties": {"seconds": positive, "goal": goal},
            "anyOf": [
                {"required": ["seconds"]},
                {
                    "not": {"required": ["seconds"]},
                    "required": ["metric", "patience"],
                    "properties": {"metric": name, "patience": {"type": "integer", "minimum": 1}},
                },
            ],
        },
        "run_state": {
            "required": ["states"],
            "properties": {"states": {"type": "array", "minItems": 1, "items": {"type": "string"}}},
        },
    }
    assert set(specs) == set(RULE_KINDS), "a new rule kind needs its spec schema here"
    return [
        {
            "title": kind,
            "description": f"the spec of a {kind} rule",
            "type": "object",
            **spec,
            "properties": {**common, **spec.get("properties", {})},
        }
        for kind, spec in specs.items()
    ]


# -- declarations ---------------------------------------------------------------------------------

RuleKind = Literal[RULE_KINDS]  # type: ignore[valid-type]
Kind = Annotated[
    RuleKind,
    Meta(
        description="what the rule watches; its spec says how",
        extra={"error": f"kind is missing or an unknown rule kind; use one of {', '.join(RULE_KINDS)}"},
    ),
]
Spec = Annotated[
    dict[str, Any],
    Meta(
        description="the kind's spec: the schema below titled by the rule's kind; a spec that is not valid for "
        "its kind is a 422 with the reason",
        extra_json_schema={"anyOf": _spec_schemas()},
        extra={
            "error": 'spec must be a JSON object: the kind\'s spec, e.g. {"metric": "loss", "op": ">", "value": 10}'
        },
    ),
]
Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=rules.MAX_NAME,
        pattern=r"\S",
        extra={"error": f"name must be a non-empty string of at most {rules.MAX_NAME} characters"},
    ),
]
Enabled = Annotated[bool, Meta(extra={"error": "enabled must be true or false"})]
Cooldown = Annotated[
    int,
    Meta(
        ge=0,
        le=rules.MAX_COOLDOWN_S,
        description="the least seconds between two alerts of the rule on one run",
        extra={"error": f"cooldown_s must be a whole number of seconds from 0 to {rules.MAX_COOLDOWN_S}"},
    ),
]


class NewAlertRule(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    kind: Kind
    spec: Spec
    enabled: Enabled = True
    cooldown_s: Cooldown = rules.DEFAULT_COOLDOWN_S


class AlertRuleChanges(msgspec.Struct, forbid_unknown_fields=True):
    """The fields to change; ``kind`` and ``spec`` only together (a spec is valid for its kind)."""

    name: Name | UnsetType = UNSET
    kind: Kind | UnsetType = UNSET
    spec: Spec | UnsetType = UNSET
    enabled: Enabled | UnsetType = UNSET
    cooldown_s: Cooldown | UnsetType = UNSET

    def __post_init__(self) -> None:
        if (self.kind is UNSET) != (self.spec is UNSET):
            raise ValueError("kind and spec change together (a spec is only valid for its kind): send both")


class AlertRule(TypedDict):
    id: str
    team: str
    project: str
    name: str
    kind: RuleKind
    spec: Annotated[
        dict[str, Any],
        Meta(
            description="the kind's spec; callers who cannot write to the project see "
            "only the scheme and host of its webhooks"
        ),
    ]
    enabled: bool
    cooldown_s: int
    created_at: Time
    updated_at: Time


class AlertRules(TypedDict):
    rules: list[AlertRule]


_APPLIED = {
    422: "the spec is not valid for its kind, a webhook aims at an internal address, or the project "
    "holds as many rules as it may; the message says why"
}


# -- helpers ------------------------------------------------------------------------------------


def _check_spec(request: Request, spec: dict[str, Any]) -> None:
    """Refuse what ``check_rule`` does not: a spec storage cannot write, and a webhook aimed at an internal
    address (now, rather than silently at its first alert)."""
    try:
        orjson.dumps(spec)
    except TypeError:  # storage writes the spec with orjson, which takes integers of at most 64 bits
        raise ApiError(422, "the spec holds an integer larger than 64 bits; send such a number as 1e30") from None
    hooks = spec.get("webhooks")
    if not isinstance(hooks, list):
        return  # check_rule explains what is wrong with it
    policy = backend_of(request).webhook_policy
    for url in hooks:
        # Not http(s) at all: check_rule says what webhooks must be.
        refused = policy.refusal(url) if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        if refused:
            raise ApiError(422, refused)


def _not_applied(exc: QueryError | RuleError) -> ApiError:
    """A rule that fits its declaration but cannot be stored (check_rule's reason, a project's rule limit)."""
    if isinstance(exc, QueryError):
        return ApiError(422, exc.message, details=exc.details or None)
    return ApiError(422, str(exc))


def _shown(rule: dict[str, Any], principal: Principal, team: str) -> dict[str, Any]:
    """A rule as this caller may see it: a webhook URL's path is its secret, so only writers see it whole."""
    hooks = rule["spec"].get("webhooks")
    if not hooks or allows(principal, team, "write"):
        return rule
    masked = [f"{urlsplit(url).scheme}://{urlsplit(url).hostname}/…" for url in hooks]
    return {**rule, "spec": {**rule["spec"], "webhooks": masked}}


# -- alert rules ---------------------------------------------------------------------------------


@endpoint(
    summary="List alert rules",
    tags=["alerts"],
    ok=Answer(AlertRules, "the rules, by name"),
    access=PROJECT_READ,
)
async def list_rules(request: Request, principal: Principal) -> Response:
    """A project's alert rules, enabled or not."""
    team, project = project_path(request)
    found = await backend_of(request).run(rules.list_rules, team, project)
    return json_response({"rules": [_shown(rule, principal, team) for rule in found]})


@endpoint(
    summary="Create an alert rule",
    tags=["alerts"],
    ok={201: Answer(AlertRule, "the new rule")},
    access=PROJECT_WRITE,
    body_bytes=MAX_RULE_JSON,
    refusals=_APPLIED,
)
async def create_rule(request: Request, body: NewAlertRule, principal: Principal) -> Response:
    """Create an alert rule; the processor applies it to the project's runs within a second."""
    team, project = project_path(request)
    _check_spec(request, body.spec)
    try:
        rule = await backend_of(request).run(
            rules.create_rule, team, project, body.name, body.kind, body.spec, body.enabled, body.cooldown_s
        )
    except (QueryError, RuleError) as exc:
        raise _not_applied(exc) from None
    # A rule may post to a webhook: where a project's alerts go is worth knowing later.
    await audit.record(request, principal, team, "rule.create", f"{project}/{rule['id']}", {"name": body.name})
    return json_response(rule, status_code=201)


@endpoint(summary="Get an alert rule", tags=["alerts"], ok=Answer(AlertRule, "the rule"), access=PROJECT_READ)
async def get_rule(request: Request, principal: Principal) -> Response:
    """One alert rule."""
    team, project = project_path(request)
    rule_id = request.path_params["rule_id"]
    rule = await backend_of(request).run(rules.get_rule, team, project, rule_id)
    if rule is None:
        raise not_found(f"alert rule {rule_id} in {team}/{project}")
    return json_response(_shown(rule, principal, team))


@endpoint(
    summary="Update an alert rule",
    tags=["alerts"],
    ok=Answer(AlertRule, "the updated rule"),
    access=PROJECT_WRITE,
    body_bytes=MAX_RULE_JSON,
    refusals={
        400: "the request does not fit its declaration (a field, parameter or value, or kind without "
        "spec); the message says what to fix",
        **_APPLIED,
    },
)
async def patch_rule(request: Request, body: AlertRuleChanges) -> Response:
    """Change an alert rule: the fields sent; ``kind`` and ``spec`` go together, and the spec is replaced whole."""
    team, project = project_path(request)
    changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not UNSET}
    if body.spec is not UNSET:
        _check_spec(request, body.spec)
    rule_id = request.path_params["rule_id"]
    try:
        rule = await backend_of(request).run(rules.update_rule, team, project, rule_id, changes)
    except (QueryError, RuleError) as exc:
        raise _not_applied(exc) from None
    if rule is None:
        raise not_found(f"alert rule {rule_id} in {team}/{project}")
    return json_response(rule)


@endpoint(
    summary="Delete an alert rule",
    tags=["alerts"],
    ok={204: Answer(None, "deleted")},
    access=PROJECT_WRITE,
)
async def delete_rule(request: Request, principal: Principal) -> Response:
    """Delete an alert rule; the processor stops applying it within a second."""
    team, project = project_path(request)
    rule_id = request.path_params["rule_id"]
    if not await backend_of(request).run(rules.delete_rule, team, project, rule_id):
        raise not_found(f"alert rule {rule_id} in {team}/{project}")
    await audit.record(request, principal, team, "rule.delete", f"{project}/{rule_id}")
    return Response(status_code=204)


routes = [
    Route(RULES_PATH, list_rules, methods=["GET"]),
    Route(RULES_PATH, create_rule, methods=["POST"]),
    Route(RULE_PATH, get_rule, methods=["GET"]),
    Route(RULE_PATH, patch_rule, methods=["PATCH"]),
    Route(RULE_PATH, delete_rule, methods=["DELETE"]),
]
