"""Finding a citymodels stack: its outputs, and AWS clients that reach it.

A stack is known by its outputs (docs/design.md §3): ``DataBucket``, ``ApiUrl``,
``EndpointName``, ``RegistryTable``, optionally ``FailureQueueUrl``; the local stack adds
``AwsEndpointUrl`` and ``AdminApiKey``. They come from, in this order:

1. ``--outputs FILE``: a JSON object of those keys;
2. ``--stack-name NAME``: CloudFormation ``DescribeStacks`` Outputs;
3. the environment variable ``CITYMODELS_OUTPUTS`` (a file, as ``--outputs``);
4. ``.citymodels/outputs.json`` in the project's root (found from any directory inside
   it, :func:`~citymodels_devkit.paths.state_dir`), which ``citymodels local up``
   writes, when it exists.

Clients reach AWS, or any endpoint: ``--endpoint-url`` first, then the standard
``AWS_ENDPOINT_URL`` variables (boto3 reads them itself), then the outputs'
``AwsEndpointUrl`` (the local stack), so ``citymodels status`` works right after
``citymodels local up`` with nothing else set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from citymodels.errors import CityModelsError
from citymodels_devkit.paths import WORK_DIR, project_root, state_dir

if TYPE_CHECKING:
    from citymodels.registry import Registry

REQUIRED_OUTPUTS: tuple[str, ...] = ("DataBucket", "ApiUrl", "EndpointName", "RegistryTable")
"""The outputs every stack has (docs/design.md §3)."""

PARAMETER_OUTPUTS: tuple[str, ...] = ("RawPrefix", "AliasCacheSeconds")
"""Template parameters a client needs, read with the outputs (docs/design.md §3)."""

DEFAULT_OUTPUTS_FILE = WORK_DIR / "outputs.json"
OUTPUTS_ENV = "CITYMODELS_OUTPUTS"
LOCAL_REGION = "us-east-1"
"""Region the local stack is addressed in when nothing else names one."""
LOCAL_CREDENTIALS = ("citymodels-local", "citymodels-local")
"""Credentials signed with when the local stack is reached and none are configured
(the local stack, like moto, accepts any)."""


class StackError(CityModelsError, ValueError):
    """The stack's outputs cannot be found or lack what a command needs."""

    code = "stack_outputs"


@dataclass(frozen=True)
class StackOutputs:
    """A stack's outputs and where they were read from.

    Attributes
    ----------
    values
        Output key to value.
    source
        For messages: ``stack NAME`` or ``file PATH``.
    """

    values: Mapping[str, str]
    source: str

    def require(self, name: str) -> str:
        """Return output ``name``, or raise :class:`StackError` saying where it was missing."""
        value = self.values.get(name, "")
        if not value:
            raise StackError(f"the stack outputs ({self.source}) have no {name}", field=name)
        return value

    def get(self, name: str) -> str | None:
        """Return an optional output, or None."""
        return self.values.get(name) or None

    @property
    def raw_prefix(self) -> str:
        """Where uploads land: the stack's ``RawPrefix`` parameter (``raw/`` if unknown)."""
        from citymodels.layout import RAW_PREFIX

        return self.get("RawPrefix") or RAW_PREFIX

    @property
    def cutover_seconds(self) -> float:
        """How far ahead an alias move is scheduled: the stack's ``AliasCacheSeconds``
        (its template default if unknown) plus the cut-over margin."""
        from citymodels.registry import cutover_lead

        value = self.get("AliasCacheSeconds")
        if value is None:
            from citymodels_devkit.local.template import load_yaml
            from citymodels_devkit.paths import REPO_ROOT

            parameters = load_yaml(REPO_ROOT / "template.yaml")["Parameters"]
            value = str(parameters["AliasCacheSeconds"]["Default"])
        try:
            return cutover_lead(float(value))
        except ValueError as err:
            raise StackError(f"AliasCacheSeconds {value!r} is not a number") from err

    @property
    def data_bucket(self) -> str:
        """The DataBucket."""
        return self.require("DataBucket")

    @property
    def api_url(self) -> str:
        """The HTTP API's base URL (with its stage)."""
        return self.require("ApiUrl")

    @property
    def endpoint_name(self) -> str:
        """The multi-model endpoint."""
        return self.require("EndpointName")

    @property
    def registry_table(self) -> str:
        """The registry table."""
        return self.require("RegistryTable")


def read_outputs_file(path: Path) -> StackOutputs:
    """Read outputs from a JSON object file (what ``citymodels local up`` writes).

    Raises
    ------
    StackError
        The file does not exist, is not JSON, or is not an object of strings.
    """
    source = f"file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise StackError(f"outputs file {path} not found", field="outputs") from err
    except OSError as err:
        raise StackError(f"cannot read outputs file {path}: {err.strerror}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StackError(
            f"outputs file {path} is not JSON (line {err.lineno}: {err.msg})", field="outputs"
        ) from err
    if not isinstance(data, dict):
        raise StackError(f"outputs file {path} must hold a JSON object", field="outputs")
    return StackOutputs({str(k): str(v) for k, v in data.items() if v is not None}, source)


def describe_stack_outputs(cloudformation: Any, stack_name: str) -> StackOutputs:
    """Read a deployed stack's Outputs through CloudFormation ``DescribeStacks``.

    Raises
    ------
    StackError
        No such stack (CloudFormation answers ``ValidationError ... does not exist``).
    """
    from botocore.exceptions import ClientError

    try:
        answer = cloudformation.describe_stacks(StackName=stack_name)
    except ClientError as err:
        error = err.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            region = cloudformation.meta.region_name
            raise StackError(
                f"stack {stack_name!r} does not exist in {region}", field="stack_name"
            ) from err
        raise
    stacks = answer.get("Stacks", [])
    if not stacks:
        raise StackError(f"stack {stack_name!r} not found", field="stack_name")
    values = {
        o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", []) if "OutputKey" in o
    }
    # where uploads land, and how long the API caches an alias, are parameters of the
    # template, not outputs (docs/design.md §3)
    for parameter in stacks[0].get("Parameters", []):
        if parameter.get("ParameterKey") in PARAMETER_OUTPUTS and parameter.get("ParameterValue"):
            values.setdefault(parameter["ParameterKey"], parameter["ParameterValue"])
    return StackOutputs(values, f"stack {stack_name}")


def find_outputs(
    *,
    outputs_file: Path | None,
    stack_name: str | None,
    cloudformation: Callable[[], Any],
    environ: Mapping[str, str] = os.environ,
    default_file: Path | None = None,
) -> StackOutputs:
    """Find the stack's outputs (the order is in the module's docstring).

    Parameters
    ----------
    outputs_file, stack_name
        The command line's ``--outputs`` and ``--stack-name``.
    cloudformation
        Returns a CloudFormation client; called only when a stack name is used.
    """
    if outputs_file is not None:
        return read_outputs_file(outputs_file)
    if stack_name:
        return describe_stack_outputs(cloudformation(), stack_name)
    from_env = environ.get(OUTPUTS_ENV)
    if from_env:
        return read_outputs_file(Path(from_env))
    if default_file is None:
        default_file = state_dir() / DEFAULT_OUTPUTS_FILE.name
    if default_file.exists():
        return read_outputs_file(default_file)
    where = (
        f"looked for {default_file}"
        if project_root() is not None
        else f"looked for {default_file}; {Path.cwd()} is in no citymodels project"
    )
    raise StackError(
        "no stack outputs: pass --stack-name NAME (a deployed stack) or --outputs FILE, "
        f"set {OUTPUTS_ENV}, or start the local stack (citymodels local up; {where})",
        field="outputs",
    )


@cache
def _data_loader() -> Any:
    from botocore.loaders import create_loader

    return create_loader()


def new_session(region: str | None = None) -> Any:
    """Return a boto3 session; all share one botocore data loader.

    Parsing a service's JSON model costs 0.02-0.2 s and the loader caches what it
    parsed, so sessions created in one process (tests, the local stack) parse each
    model once.
    """
    import boto3
    import botocore.session

    loader = _data_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", loader)
    session = boto3.session.Session(botocore_session=core, region_name=region)
    # boto3 appends its own data directory to the loader's path for every session
    loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
    return session


def _endpoint_url_from_environment(environ: Mapping[str, str]) -> bool:
    return any(name.startswith("AWS_ENDPOINT_URL") and value for name, value in environ.items())


@dataclass
class Stack:
    """The stack a command works on: its outputs (read on first use) and AWS clients.

    Parameters
    ----------
    stack_name, outputs_file
        How to find the outputs (see :func:`find_outputs`).
    region
        ``--region``; boto3's own resolution (``AWS_DEFAULT_REGION``, the profile), then
        ``AWS_REGION``, otherwise.
    endpoint_url
        ``--endpoint-url``; see the module docstring for what applies without it.
    session
        A boto3 session; one is created when omitted.
    """

    stack_name: str | None = None
    outputs_file: Path | None = None
    region: str | None = None
    endpoint_url: str | None = None
    session: Any = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _clients: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.session is None:
            self.session = new_session(self.region)

    @cached_property
    def outputs(self) -> StackOutputs:
        """The stack's outputs (found on first use)."""
        return find_outputs(
            outputs_file=self.outputs_file,
            stack_name=self.stack_name,
            cloudformation=lambda: self._client("cloudformation", use_outputs=False),
            environ=self.environ,
        )

    def _endpoint(self, *, use_outputs: bool) -> tuple[str | None, bool]:
        """Return the endpoint URL and whether it is the local stack's (from the outputs)."""
        if self.endpoint_url:
            return self.endpoint_url, False
        if _endpoint_url_from_environment(self.environ):
            # boto3 reads AWS_ENDPOINT_URL(_<SERVICE>) itself. Exported as `local up`
            # suggests, it points at the local stack: its region and credentials still
            # stand in for any the environment does not name.
            return None, use_outputs and self.is_local
        if use_outputs and self.stack_name is None:
            local = self.outputs.get("AwsEndpointUrl")
            return local, local is not None
        return None, False

    @property
    def is_local(self) -> bool:
        """Whether the outputs are the local stack's (a file with ``AwsEndpointUrl``)."""
        return self.stack_name is None and self.outputs.get("AwsEndpointUrl") is not None

    @property
    def region_name(self) -> str | None:
        """The region clients use (None when nothing names one): ``--region``, boto3's
        (``AWS_DEFAULT_REGION``, the profile), else ``AWS_REGION``, which boto3 ignores but
        Lambda and most other SDKs set and read."""
        return self.region or self.session.region_name or self.environ.get("AWS_REGION") or None

    def client(self, service: str) -> Any:
        """Return a (cached) boto3 client for ``service`` that reaches the stack."""
        return self._client(service, use_outputs=True)

    def _client(self, service: str, *, use_outputs: bool) -> Any:
        if service in self._clients:
            return self._clients[service]
        from botocore.config import Config

        endpoint, local = self._endpoint(use_outputs=use_outputs)
        kwargs: dict[str, Any] = {
            "endpoint_url": endpoint,
            "config": Config(connect_timeout=10, read_timeout=60),
        }
        region = self.region_name or (LOCAL_REGION if local else None)
        if region is not None:
            kwargs["region_name"] = region
        if local and self.session.get_credentials() is None:
            kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = LOCAL_CREDENTIALS
        client = self.session.client(service, **kwargs)
        self._clients[service] = client
        return client

    def registry(self) -> Registry:
        """Return the registry on the stack's table."""
        from citymodels.registry import Registry

        return Registry(self.outputs.registry_table, client=self.client("dynamodb"))


def explain_aws_error(err: BaseException) -> str | None:
    """Return one line for a person explaining an AWS failure, or None if it is not one.

    Covers what a user can fix: a missing bucket, table or stack, denied access, missing
    credentials or region, an unreachable endpoint. Other service errors are reported
    with their code and message.
    """
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    if isinstance(err, EndpointConnectionError):
        where = str(err.kwargs.get("endpoint_url") or "the AWS endpoint")
        host = urlsplit(where).hostname or ""
        local = host in ("localhost", "::1") or host.startswith("127.")
        return f"cannot reach {where}" + (
            " (is the local stack running? citymodels local up)" if local else ""
        )
    if isinstance(err, BotoConnectionError):
        return f"cannot reach the AWS endpoint: {err}"
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return (
            "no AWS credentials: configure a profile (aws configure, AWS_PROFILE) or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(err, NoRegionError):
        return "no AWS region: pass --region or set AWS_DEFAULT_REGION"
    if isinstance(err, ProfileNotFound):
        return str(err)
    if not isinstance(err, ClientError):
        return None
    error = err.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", "")).strip()
    operation = err.operation_name
    if code == "NoSuchBucket":
        bucket = error.get("BucketName") or "the DataBucket"
        return f"bucket {bucket} does not exist (check --stack-name / --outputs and --region)"
    if code in ("ResourceNotFoundException", "QueueDoesNotExist") or code.endswith(
        "NonExistentQueue"
    ):
        return (
            f"{operation}: not found: {message or code} "
            "(check --stack-name / --outputs and --region)"
        )
    if code in (
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthorizationError",
    ):
        return f"access denied to {operation}: {message or code}"
    if code in (
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
    ):
        return f"AWS refused the credentials ({code}): {message or 'check your profile'}"
    return f"{operation} failed: {code}: {message}" if message else f"{operation} failed: {code}"
