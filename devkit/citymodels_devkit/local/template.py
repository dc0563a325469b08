"""Reading ``template.yaml`` for the local stack: the template is the single source of
truth for wiring, so the local stack takes its functions, environment, event rules,
API routes, authorizer, queues, tables, bucket and outputs from it.

CloudFormation intrinsic functions are resolved against local values: parameters
(defaults, then overrides), pseudo parameters (``AWS::StackName``, ``AWS::Region``,
``AWS::AccountId``, ``AWS::URLSuffix``, ``AWS::Partition``) and the local physical
names and attributes of resources (a bucket's name, a queue's URL/ARN, an endpoint's
name...). What the local stack does not model resolves to a placeholder string, never
to a silent empty value.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"

_TAGS = (
    "Ref", "Sub", "GetAtt", "Join", "Select", "Split", "If", "Equals", "Not", "And", "Or",
    "FindInMap", "Base64", "Cidr", "ImportValue", "GetAZs", "Condition", "ToJsonString",
)  # fmt: skip


class TemplateError(ValueError):
    """The template cannot be read or uses something the local stack cannot resolve."""


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that understands CloudFormation's short-form tags."""


def _construct(tag: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if tag == "GetAtt" and isinstance(value, str):
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        key = "Ref" if tag == "Ref" else ("Condition" if tag == "Condition" else f"Fn::{tag}")
        return {key: value}

    return construct


for _tag in _TAGS:
    _CfnLoader.add_constructor(f"!{_tag}", _construct(_tag))


def load_yaml(path: Path) -> dict[str, Any]:
    """Load a CloudFormation/SAM template, short-form tags as their long forms."""
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)
    except (OSError, yaml.YAMLError) as err:
        raise TemplateError(f"cannot read {path}: {err}") from err
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return document


@dataclass(frozen=True)
class EventRule:
    """An EventBridge rule that targets a function."""

    function: str
    name: str
    pattern: dict[str, Any]
    retry_attempts: int = 185
    max_event_age_seconds: int = 86_400


@dataclass(frozen=True)
class Schedule:
    """A function's EventBridge schedule (a ``Schedule`` or ``ScheduleV2`` event)."""

    function: str
    name: str
    expression: str
    period_seconds: float


_RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86_400}


def rate_seconds(expression: str) -> float:
    """Return the period of an EventBridge ``rate(N unit)`` expression, in seconds.

    Raises
    ------
    TemplateError
        Anything else (a ``cron(...)`` expression: the local stack runs rates only).
    """
    match = re.fullmatch(r"rate\(\s*(\d+)\s+(minute|hour|day)s?\s*\)", expression.strip())
    if match is None or int(match.group(1)) < 1:
        raise TemplateError(
            f"schedule {expression!r}: the local stack runs rate(N minutes|hours|days) only"
        )
    return int(match.group(1)) * _RATE_UNITS[match.group(2)]


@dataclass(frozen=True)
class QueueSource:
    """An SQS event source of a function."""

    function: str
    queue: str  # logical id
    batch_size: int = 10


@dataclass(frozen=True)
class Route:
    """An API route served by a function."""

    function: str
    method: str
    path: str
    authorizer: str | None  # None: no authorizer (Auth: Authorizer: NONE)


@dataclass(frozen=True)
class Authorizer:
    """A Lambda REQUEST authorizer."""

    name: str
    function: str
    identity_headers: tuple[str, ...]
    ttl_seconds: int


@dataclass(frozen=True)
class GatewayResponse:
    """One of the API's gateway responses (what API Gateway itself answers, e.g. a 401).

    Attributes
    ----------
    status
        ``StatusCode``, or None for the response type's own.
    templates
        ``ResponseTemplates``: content type to body template.
    headers
        Response headers (``ResponseParameters``), values as sent.
    """

    status: int | None
    templates: dict[str, str]
    headers: dict[str, str]


def read_gateway_response(spec: Mapping[str, Any], *, sam: bool) -> GatewayResponse:
    """Read a SAM ``GatewayResponses`` entry (``sam``) or an
    ``AWS::ApiGateway::GatewayResponse``'s properties."""
    status = spec.get("StatusCode")
    params = spec.get("ResponseParameters") or {}
    headers: dict[str, str] = {}
    if sam:  # {"Headers": {"Name": "'value'"}}: SAM passes the values on as written
        items = (params.get("Headers") or {}).items()
    else:  # {"gatewayresponse.header.Name": "'value'"}
        prefix = "gatewayresponse.header."
        items = ((k[len(prefix) :], v) for k, v in params.items() if k.startswith(prefix))
    for name, value in items:
        text = str(value)
        headers[str(name)] = text[1:-1] if len(text) > 1 and text[0] == text[-1] == "'" else text
    return GatewayResponse(
        status=int(status) if status is not None else None,
        templates={str(k): str(v) for k, v in (spec.get("ResponseTemplates") or {}).items()},
        headers=headers,
    )


@dataclass(frozen=True)
class Function:
    """A Lambda function as the local stack runs it."""

    logical_id: str
    code_dir: Path
    handler: str
    environment: dict[str, str]
    timeout: int
    max_retries: int
    on_failure_queue: str | None  # logical id of the OnFailure destination queue


@dataclass
class ResolvedTemplate:
    """The template resolved for a local run."""

    name: str
    root: Path
    parameters: dict[str, str]
    functions: dict[str, Function] = field(default_factory=dict)
    rules: list[EventRule] = field(default_factory=list)
    queue_sources: list[QueueSource] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    authorizers: dict[str, Authorizer] = field(default_factory=dict)
    api_stage: str = "v1"
    default_authorizer: str | None = None
    gateway_responses: dict[str, GatewayResponse] = field(default_factory=dict)
    """Response type (``UNAUTHORIZED``, ``DEFAULT_4XX``...) to the template's response."""
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoint_name: str = ""
    model_containers: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)


def physical_name(stack: str, logical_id: str) -> str:
    """Return a resource's local physical name: ``{stack}-{logical id}``, lower case."""
    return f"{stack}-{logical_id}".lower()


class Resolver:
    """Resolves intrinsic functions against local values."""

    def __init__(
        self,
        template: Mapping[str, Any],
        stack: str,
        parameters: Mapping[str, str],
        attributes: Mapping[str, Mapping[str, str]],
        refs: Mapping[str, str],
    ) -> None:
        self.template = template
        self.stack = stack
        self.parameters = dict(parameters)
        self.attributes = attributes
        self.refs = refs
        self.conditions: dict[str, bool] = {}
        for name, expression in (template.get("Conditions") or {}).items():
            self.conditions[name] = bool(self.resolve(expression))

    def pseudo(self, name: str) -> str | None:
        return (
            {
                "AWS::StackName": self.stack,
                "AWS::Region": REGION,
                "AWS::AccountId": ACCOUNT_ID,
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::Partition": "aws",
                "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{self.stack}/local",
                "AWS::NoValue": None,
            }.get(name, "<unknown>")
            if name.startswith("AWS::")
            else None
        )

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        raise TemplateError(f"!Ref {name}: no such parameter or resource")

    def get_att(self, logical_id: str, attribute: str) -> str:
        values = self.attributes.get(logical_id)
        if values is None:
            raise TemplateError(f"!GetAtt {logical_id}.{attribute}: no such resource")
        return values.get(attribute, f"<{logical_id}.{attribute}>")

    def resolve(self, value: Any) -> Any:
        """Resolve every intrinsic function in ``value``."""
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not None]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return self.get_att(str(parts[0]), str(self.resolve(parts[1])))
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return str(sep).join(str(i) for i in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key == "Fn::If":
                name, yes, no = arg
                return self.resolve(yes if self.conditions.get(name) else no)
            if key == "Fn::Equals":
                a, b = (self.resolve(x) for x in arg)
                return a == b
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(x) for x in arg)
            if key == "Fn::Or":
                return any(self.resolve(x) for x in arg)
            if key == "Condition":
                return self.conditions.get(arg, False)
            if key == "Fn::ToJsonString":
                return json.dumps(self.resolve(arg))
            if key == "Fn::Base64":
                return self.resolve(arg)
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        resolved_vars = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in resolved_vars:
                return str(resolved_vars[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attribute = name.split(".", 1)
                return str(self.get_att(logical, attribute))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def _resource_attributes(
    stack: str, logical_id: str, resource: Mapping[str, Any], aws_url: str, api_url: str
) -> tuple[str, dict[str, str]]:
    """Return (Ref value, attributes) of a resource as the local stack names it."""
    kind = resource.get("Type", "")
    props = resource.get("Properties") or {}
    name = physical_name(stack, logical_id)
    arn = f"arn:aws:{{service}}:{REGION}:{ACCOUNT_ID}:{{kind}}/{name}"
    if kind == "AWS::S3::Bucket":
        given = props.get("BucketName")
        bucket = given if isinstance(given, str) else name
        return bucket, {"Arn": f"arn:aws:s3:::{bucket}", "DomainName": f"{bucket}.s3.amazonaws.com"}
    if kind == "AWS::SQS::Queue":
        url = f"{aws_url}/{ACCOUNT_ID}/{name}"
        return url, {
            "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}",
            "QueueName": name,
            "QueueUrl": url,
        }
    if kind == "AWS::DynamoDB::Table":
        return name, {
            "Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}",
            "StreamArn": "",
        }
    if kind == "AWS::SageMaker::Endpoint":
        return name, {"EndpointName": name, "Arn": arn.format(service="sagemaker", kind="endpoint")}
    if kind == "AWS::SageMaker::EndpointConfig":
        return name, {"EndpointConfigName": name}
    if kind == "AWS::SageMaker::Model":
        return name, {"ModelName": name}
    if kind == "AWS::IAM::Role":
        return name, {"Arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{name}", "RoleId": name}
    if kind in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
        return name, {"Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"}
    if kind in ("AWS::Serverless::Api", "AWS::ApiGateway::RestApi"):
        return "local", {"RootResourceId": "local"}
    return name, {"Arn": arn.format(service="local", kind=kind), "Name": name}


def resolve_template(
    template_path: Path,
    *,
    stack_name: str,
    parameter_overrides: Mapping[str, str] | None = None,
    aws_url: str = "http://127.0.0.1:4566",
    api_url: str = "http://127.0.0.1:3000",
    extra_attributes: Mapping[str, Mapping[str, str]] | None = None,
) -> ResolvedTemplate:
    """Read and resolve the template for a local run.

    Parameters
    ----------
    template_path
        The SAM template (its directory is the root for ``CodeUri``).
    stack_name
        The local stack's name (scopes job names like ``AWS::StackName`` does).
    parameter_overrides
        Parameter values over the template's defaults.
    aws_url, api_url
        The local stack's endpoints (for queue URLs and the ``ApiUrl`` output).
    extra_attributes
        Attributes of resources the local stack computed itself, e.g. a custom
        resource's ``Data`` (``{"Bootstrap": {"PreprocessorModelDataUrl": ...}}``).
    """
    template = load_yaml(template_path)
    root = template_path.resolve().parent
    parameters: dict[str, str] = {}
    overrides = dict(parameter_overrides or {})
    for name, spec in (template.get("Parameters") or {}).items():
        if name in overrides:
            parameters[name] = str(overrides.pop(name))
        elif "Default" in spec:
            default = spec["Default"]
            parameters[name] = (
                ",".join(map(str, default)) if isinstance(default, list) else str(default)
            )
        else:
            raise TemplateError(f"parameter {name} has no default; pass it as an override")
    if overrides:
        raise TemplateError(f"unknown parameter override(s): {', '.join(sorted(overrides))}")

    resources: dict[str, dict[str, Any]] = template["Resources"]
    refs: dict[str, str] = {}
    attributes: dict[str, dict[str, str]] = {}
    for logical_id, resource in resources.items():
        refs[logical_id], attributes[logical_id] = _resource_attributes(
            stack_name, logical_id, resource, aws_url, api_url
        )
    for logical_id, values in (extra_attributes or {}).items():
        attributes.setdefault(logical_id, {}).update(values)
    # SAM's implicit resources that templates commonly reference.
    for logical_id, resource in list(resources.items()):
        if resource.get("Type") == "AWS::Serverless::Api":
            attributes.setdefault(f"{logical_id}.Stage", {})
    resolver = Resolver(template, stack_name, parameters, attributes, refs)

    stack = ResolvedTemplate(name=stack_name, root=root, parameters=parameters)
    globals_fn = copy.deepcopy((template.get("Globals") or {}).get("Function") or {})
    global_env = (globals_fn.get("Environment") or {}).get("Variables") or {}

    for logical_id, resource in resources.items():
        kind = resource.get("Type")
        props = resource.get("Properties") or {}
        if resource.get("Condition") and not resolver.conditions.get(resource["Condition"], True):
            continue
        stack.resources[logical_id] = resource
        if kind == "AWS::S3::Bucket":
            stack.buckets[logical_id] = {"name": refs[logical_id], **resolver.resolve(props)}
        elif kind == "AWS::DynamoDB::Table":
            stack.tables[logical_id] = {"name": refs[logical_id], **resolver.resolve(props)}
        elif kind == "AWS::SQS::Queue":
            stack.queues[logical_id] = {
                "name": attributes[logical_id]["QueueName"],
                **resolver.resolve(props),
            }
        elif kind == "AWS::SageMaker::Endpoint":
            stack.endpoint_name = refs[logical_id]
        elif kind == "AWS::SageMaker::Model":
            stack.model_containers = resolver.resolve(props.get("Containers") or [])
        elif kind == "AWS::Serverless::Api":
            stack.api_stage = str(resolver.resolve(props.get("StageName", "v1")))
            auth = props.get("Auth") or {}
            for name, spec in (auth.get("Authorizers") or {}).items():
                function_ref = spec.get("FunctionArn")
                function = (
                    function_ref["Fn::GetAtt"][0]
                    if isinstance(function_ref, dict)
                    else str(function_ref)
                )
                identity = spec.get("Identity") or {}
                stack.authorizers[name] = Authorizer(
                    name=name,
                    function=function,
                    identity_headers=tuple(identity.get("Headers") or ["Authorization"]),
                    ttl_seconds=int(identity.get("ReauthorizeEvery", 300)),
                )
            stack.default_authorizer = auth.get("DefaultAuthorizer")
            for response_type, spec in (props.get("GatewayResponses") or {}).items():
                stack.gateway_responses[str(response_type)] = read_gateway_response(
                    resolver.resolve(spec), sam=True
                )
        elif kind == "AWS::ApiGateway::GatewayResponse":
            spec = resolver.resolve(props)
            stack.gateway_responses[str(spec["ResponseType"])] = read_gateway_response(
                spec, sam=False
            )
        elif kind == "AWS::Serverless::Function":
            _add_function(stack, resolver, logical_id, props, globals_fn, global_env)

    stack.routes = [
        Route(
            r.function,
            r.method,
            r.path,
            stack.default_authorizer if r.authorizer == "__default__" else r.authorizer,
        )
        for r in stack.routes
    ]
    for name, spec in (template.get("Outputs") or {}).items():
        try:
            stack.outputs[name] = str(resolver.resolve(spec["Value"]))
        except TemplateError:
            stack.outputs[name] = "<unresolved>"
    return stack


def _add_function(
    stack: ResolvedTemplate,
    resolver: Resolver,
    logical_id: str,
    props: Mapping[str, Any],
    globals_fn: Mapping[str, Any],
    global_env: Mapping[str, Any],
) -> None:
    env = {**global_env, **((props.get("Environment") or {}).get("Variables") or {})}
    environment = {k: str(v) for k, v in resolver.resolve(env).items() if v is not None}
    invoke = props.get("EventInvokeConfig") or globals_fn.get("EventInvokeConfig") or {}
    on_failure = (invoke.get("DestinationConfig") or {}).get("OnFailure") or {}
    destination = on_failure.get("Destination")
    failure_queue = None
    if isinstance(destination, dict):
        target = destination.get("Fn::GetAtt") or destination.get("Ref")
        failure_queue = target[0] if isinstance(target, list) else str(target)
    code_uri = props.get("CodeUri", globals_fn.get("CodeUri", "."))
    stack.functions[logical_id] = Function(
        logical_id=logical_id,
        code_dir=(stack.root / str(code_uri)).resolve(),
        handler=str(props.get("Handler", globals_fn.get("Handler", "app.lambda_handler"))),
        environment=environment,
        timeout=int(props.get("Timeout", globals_fn.get("Timeout", 3))),
        max_retries=int(invoke.get("MaximumRetryAttempts", 2)),
        on_failure_queue=failure_queue,
    )
    for event_name, event in (props.get("Events") or {}).items():
        kind = event.get("Type")
        eprops = event.get("Properties") or {}
        if kind in ("EventBridgeRule", "CloudWatchEvent"):
            retry = eprops.get("RetryPolicy") or {}
            stack.rules.append(
                EventRule(
                    function=logical_id,
                    name=f"{logical_id}{event_name}",
                    pattern=resolver.resolve(eprops["Pattern"]),
                    retry_attempts=int(retry.get("MaximumRetryAttempts", 185)),
                    max_event_age_seconds=int(retry.get("MaximumEventAgeInSeconds", 86_400)),
                )
            )
        elif kind in ("Schedule", "ScheduleV2"):
            expression = str(
                resolver.resolve(eprops.get("Schedule") or eprops.get("ScheduleExpression"))
            )
            stack.schedules.append(
                Schedule(
                    function=logical_id,
                    name=f"{logical_id}{event_name}",
                    expression=expression,
                    period_seconds=rate_seconds(expression),
                )
            )
        elif kind == "SQS":
            queue = eprops["Queue"]
            target = queue.get("Fn::GetAtt") if isinstance(queue, dict) else None
            stack.queue_sources.append(
                QueueSource(
                    function=logical_id,
                    queue=target[0] if target else str(queue),
                    batch_size=int(eprops.get("BatchSize", 10)),
                )
            )
        elif kind == "Api":
            auth = (eprops.get("Auth") or {}).get("Authorizer", "__default__")
            stack.routes.append(
                Route(
                    function=logical_id,
                    method=str(eprops["Method"]).upper(),
                    path=str(eprops["Path"]),
                    authorizer=None if auth == "NONE" else auth,
                )
            )
