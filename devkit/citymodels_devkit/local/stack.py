"""The local stack: the SAM application running unchanged on one machine.

``LocalStack`` reads ``template.yaml`` and, with no AWS account and no Docker:

1. starts the DynamoDB process (moto's DynamoDB and its kept state), then the aws
   process: one AWS endpoint (moto for what moto serves, DynamoDB forwarded to its
   process; SageMaker jobs that really run, in its worker processes; AWS-shaped S3
   events; the kept state) — :mod:`.processes`, :mod:`.aws`, :mod:`.sagemaker`,
   :mod:`.s3events`;
2. creates the template's bucket, table and queues there, and runs the deployment's
   bootstrap (the processing code and the preprocessor artifact in S3);
3. starts the endpoint process: the multi-model endpoint's invocations, which
   ``AwsEndpointUrl`` forwards there, and its CloudWatch metrics every second —
   :mod:`.mme`;
4. hosts the template's functions in this process with the template's environment and
   ``AWS_ENDPOINT_URL`` set (and the DynamoDB and endpoint processes' own URLs for
   those two services, as Lambda reaches each service's own endpoint), routing events
   to them by the template's rules, and
   invoking scheduled ones at the template's rate — :mod:`.lambdas`;
5. serves the template's REST API with its authorizer, in this process — :mod:`.apigw`;
6. prints and writes the stack outputs (docs/design.md §3, plus ``AwsEndpointUrl`` and
   ``AdminApiKey``).

Tests start the same stack from the test process (``tests/integration/conftest.py``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from citymodels_devkit.local.apigw import ApiGateway
from citymodels_devkit.local.aws import LocalAwsServer
from citymodels_devkit.local.lambdas import EventRouter, FunctionHost
from citymodels_devkit.local.mme.metrics import EndpointStats
from citymodels_devkit.local.persistence import Restored, StateStore
from citymodels_devkit.local.processes import (
    LOCAL_STACK_AGENT,
    AwsReady,
    AwsSpec,
    DynamoDBSpec,
    EndpointSpec,
    PortInUse,
    ServiceProcess,
    listen,
    preload_aws,
    preload_dynamodb,
    preload_endpoint,
    serve_aws,
    serve_dynamodb,
    serve_endpoint,
)
from citymodels_devkit.local.template import ACCOUNT_ID, REGION, ResolvedTemplate, resolve_template
from citymodels_devkit.local.trace import merge_reports
from citymodels_devkit.paths import REPO_ROOT
from citymodels_devkit.stack import PARAMETER_OUTPUTS

log = logging.getLogger("citymodels.local")

LOCAL_IMAGES = {
    "SklearnImageUri": "local/sagemaker-scikit-learn:1.2-1-cpu-py3",
    "LinearLearnerImageUri": "local/linear-learner:1",
}
"""Image URIs the local job service maps to local executors (any URI naming the
framework works; these make it plain that nothing is pulled)."""

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


@dataclass
class LocalOptions:
    """How the local stack runs.

    Attributes
    ----------
    stack_name
        Plays ``AWS::StackName`` (job names are ``cm-{stack}-...``).
    host, aws_port, api_port
        Where the AWS endpoint and the HTTP API listen (0: a free port).
    parameter_overrides
        Template parameters (image URIs default to local ones).
    work_dir
        Job directories, the endpoint's disk tier.
    mme_max_models, mme_max_memory_mb
        The endpoint's memory-tier bounds (None: unbounded).
    instance_memory_mb, baseline_memory_mb, model_overhead_mb
        For ``MemoryUtilization`` (see :class:`MultiModelEndpoint`).
    load_wait_seconds
        A request waiting longer on a loading model gets ModelNotReadyException.
    load_delay_seconds
        Test hook: slow every model load.
    job_workers
        Worker processes running SageMaker jobs. Three by default, on any machine: a
        job spends most of its run waiting on S3 in the aws process, so a third worker
        keeps the queue moving on two cores (1,000 cities onboarded: 151 s with two,
        138 s with three).
    function_concurrency
        Execution environments per function.
    metrics_period_seconds
        How often the endpoint's metrics go to CloudWatch (AWS: 60 s).
    schedule_period_seconds
        Run the template's schedules (the reconciler) this often instead of at their
        rate (None: the template's rate; tests set a short one).
    persist
        Keep the state (S3 objects, the registry, keys, queues, jobs) in
        ``work_dir/state`` and restore it on the next start (``local up`` does; the
        in-process test stack and the demo start empty).
    fresh
        With ``persist``: delete the kept state first and start empty.
    snapshot_interval_seconds
        With ``persist``: how often a snapshot is taken while changes come in (the
        journal keeps every change in between; a snapshot is also taken on stop).
    """

    stack_name: str = "citymodels-local"
    host: str = "127.0.0.1"
    aws_port: int = 4566
    api_port: int = 3000
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    work_dir: Path = Path(".citymodels/local")
    mme_max_models: int | None = None
    mme_max_memory_mb: float | None = None
    instance_memory_mb: float = 16_384.0
    baseline_memory_mb: float = 1_024.0
    model_overhead_mb: float = 0.0
    load_wait_seconds: float = 60.0
    load_delay_seconds: float = 0.0
    job_workers: int = 3
    function_concurrency: int = 4
    metrics_period_seconds: float = 1.0
    schedule_period_seconds: float | None = None
    persist: bool = False
    fresh: bool = False
    snapshot_interval_seconds: float = 600.0

    @property
    def state_dir(self) -> Path:
        """Where the kept state lives (with ``persist``)."""
        return self.work_dir / "state"


class LocalStack:
    """Run the template's application locally.

    Parameters
    ----------
    template
        The SAM template (default: the repository's ``template.yaml``).
    options
        See :class:`LocalOptions`.
    """

    def __init__(self, template: Path | None = None, options: LocalOptions | None = None) -> None:
        self.template = (template or REPO_ROOT / "template.yaml").resolve()
        self.options = options or LocalOptions()
        self.outputs: dict[str, str] = {}
        self.stack: ResolvedTemplate | None = None
        self.aws_url: str | None = None
        """``AwsEndpointUrl``: every AWS API, invocations included (forwarded)."""
        self.endpoint_url: str | None = None
        """The endpoint process's own URL: SageMaker Runtime for the functions."""
        self.dynamodb_url: str | None = None
        """The DynamoDB process's own URL: DynamoDB for the functions."""
        self.router: EventRouter | None = None
        self.host: FunctionHost | None = None
        self.api: ApiGateway | None = None
        self._aws: ServiceProcess | None = None
        self._endpoint: ServiceProcess | None = None
        self._dynamodb: ServiceProcess | None = None
        self._api_server: LocalAwsServer | None = None
        self._saved_env: dict[str, str | None] = {}
        self.restored: Restored | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> dict[str, str]:
        """Start everything; return the stack outputs."""
        opts = self.options
        try:
            self._set_env(
                CREDENTIALS | {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION},
                only_missing=True,
            )
            # --fresh: wiped here, before any process keeps anything there
            if opts.persist and opts.fresh:
                StateStore.wipe(opts.state_dir)
            # The interpreters start now (with the credentials above) and import what
            # they need while this one reads the template; each gets its spec when wanted.
            self._dynamodb = ServiceProcess("dynamodb", serve_dynamodb, preload_dynamodb).spawn()
            self._aws = ServiceProcess("aws", serve_aws, preload_aws).spawn()
            self._endpoint = ServiceProcess("endpoint", serve_endpoint, preload_endpoint).spawn()
            overrides = {**LOCAL_IMAGES, **opts.parameter_overrides}
            # A first reading names the resources the AWS endpoint must know about.
            probe = resolve_template(
                self.template, stack_name=opts.stack_name, parameter_overrides=overrides
            )
            event_buckets = [
                spec["name"]
                for spec in probe.buckets.values()
                if (
                    (spec.get("NotificationConfiguration") or {}).get("EventBridgeConfiguration")
                    or {}
                ).get("EventBridgeEnabled")
                in (True, "true", "True")
            ]
            # Each queue's receiver holds a moto thread during its long poll: size moto's
            # pool for them plus the handlers' own calls, or calls queue behind polls.
            pollers = len(probe.rules) + len(probe.queue_sources)
            # DynamoDB first: it adopts what a stack that kept it in the aws process's
            # directory left there before the aws process's first snapshot drops it.
            kept = opts.state_dir if opts.persist else None
            tables: AwsReady = self._dynamodb.start(
                DynamoDBSpec(
                    host=opts.host,
                    wsgi_workers=32,
                    state_dir=None if kept is None else kept / "dynamodb",
                    adopt_from=kept,
                    snapshot_interval=opts.snapshot_interval_seconds,
                )
            )
            self.dynamodb_url = tables.url
            ready: AwsReady = self._aws.start(
                AwsSpec(
                    host=opts.host,
                    port=opts.aws_port,
                    event_buckets=tuple(event_buckets),
                    job_workers=opts.job_workers,
                    wsgi_workers=pollers + 32,
                    state_dir=kept,
                    snapshot_interval=opts.snapshot_interval_seconds,
                    dynamodb_url=tables.url,
                )
            )
            self.restored = _both(ready.restored, tables.restored)
            if self.restored is not None and not self.restored.empty:
                log.info(
                    "restored the state of %s in %.2f s (%d journal records)",
                    opts.state_dir,
                    self.restored.seconds,
                    self.restored.records,
                )
            aws_url = self.aws_url = ready.url
            self._set_env({"AWS_ENDPOINT_URL": aws_url, "AWS_ENDPOINT_URL_DYNAMODB": tables.url})
            clients = _Clients(aws_url, tables.url)
            self._create_resources(probe, clients)
            published = self._bootstrap(probe, clients)
            stack = resolve_template(
                self.template,
                stack_name=opts.stack_name,
                parameter_overrides=overrides,
                aws_url=aws_url,
                extra_attributes={"Bootstrap": published},
            )
            self.stack = stack
            endpoint_url = self.endpoint_url = self._endpoint.start(self._endpoint_spec(stack))
            self._aws.call("register_endpoint", stack.endpoint_name, endpoint_url)

            env = FunctionHost.environment(stack)
            # The functions call the endpoint's and DynamoDB's processes directly (as
            # Lambda calls each service's own endpoint); other clients take AwsEndpointUrl.
            env.update(
                {
                    "POWERTOOLS_TRACE_DISABLED": "true",
                    "AWS_ENDPOINT_URL": aws_url,
                    "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint_url,
                    "AWS_ENDPOINT_URL_DYNAMODB": tables.url,
                }
            )
            self._set_env(env)
            self.host = FunctionHost(stack, max_concurrency=opts.function_concurrency)
            for function in stack.functions:
                if function != "BootstrapFunction":
                    self.host.warm(function)
            self.router = EventRouter(
                stack,
                self.host,
                clients.events,
                clients.sqs,
                queue_urls={k: clients.queue_urls[k] for k in clients.queue_urls},
                workers_per_function=opts.function_concurrency,
            )
            self.router.setup_rules()
            self.router.setup_schedules(opts.schedule_period_seconds)
            self.api = ApiGateway(stack, self.host)
            self._api_server = listen(self.api, opts.host, opts.api_port, "api")
            self.outputs = self._outputs(stack, clients)
            self._dynamodb.call("checkpoint")
            self._aws.call("checkpoint")
            return self.outputs
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything and restore the environment."""
        if self.router is not None:
            self.router.stop()
        if self._api_server is not None:
            self._api_server.stop()
        # the aws process after the endpoint (which reads its S3), DynamoDB last (the
        # aws process forwards to it); each takes its snapshot as it stops
        for process in (self._endpoint, self._aws, self._dynamodb):
            if process is not None:
                process.stop()
        self._api_server = self._endpoint = self._aws = self._dynamodb = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pieces ----------------------------------------------------------------------

    def _set_env(self, values: Mapping[str, str], *, only_missing: bool = False) -> None:
        for name, value in values.items():
            if only_missing and os.environ.get(name):
                continue
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _create_resources(self, stack: ResolvedTemplate, clients: _Clients) -> None:
        # A restored stack has them already: creating is skipped, not repeated.
        buckets = {b["Name"] for b in clients.s3.list_buckets().get("Buckets", [])}
        tables = set(clients.dynamodb.list_tables().get("TableNames", []))
        for spec in stack.buckets.values():
            if spec["name"] not in buckets:
                clients.s3.create_bucket(Bucket=spec["name"])
            if (spec.get("VersioningConfiguration") or {}).get("Status") == "Enabled":
                clients.s3.put_bucket_versioning(
                    Bucket=spec["name"], VersioningConfiguration={"Status": "Enabled"}
                )
        for spec in stack.tables.values():
            if spec["name"] in tables:
                continue
            indexes = spec.get("GlobalSecondaryIndexes")
            clients.dynamodb.create_table(
                TableName=spec["name"],
                KeySchema=spec["KeySchema"],
                AttributeDefinitions=spec["AttributeDefinitions"],
                BillingMode="PAY_PER_REQUEST",
                **({"GlobalSecondaryIndexes": indexes} if indexes else {}),
            )
        for logical_id, spec in stack.queues.items():
            attributes = {
                k: str(spec[k])
                for k in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds")
                if k in spec
            }
            url = clients.sqs.create_queue(QueueName=spec["name"], Attributes=attributes)[
                "QueueUrl"
            ]
            clients.queue_urls[logical_id] = url

    def _bootstrap(self, stack: ResolvedTemplate, clients: _Clients) -> dict[str, str]:
        bootstrap = stack.functions.get("BootstrapFunction")
        if bootstrap is None:
            raise RuntimeError(
                "the template has no BootstrapFunction: nothing creates the artifacts"
            )
        module = _load_module(bootstrap.code_dir / "artifacts.py", "citymodels_bootstrap_artifacts")
        bucket = next(iter(stack.buckets.values()))["name"]
        published = module.publish(clients.s3, bucket)
        return dict(published.to_data())

    def _endpoint_spec(self, stack: ResolvedTemplate) -> EndpointSpec:
        containers = stack.model_containers
        mme = next((c for c in containers if c.get("Mode") == "MultiModel"), None)
        preprocessor = next((c for c in containers if c.get("Mode") != "MultiModel"), None)
        if mme is None or preprocessor is None:
            raise RuntimeError("the template's Model must be [preprocessor, MultiModel container]")
        assert self.aws_url is not None
        return EndpointSpec(
            name=stack.endpoint_name,
            aws_url=self.aws_url,
            models=str(mme["ModelDataUrl"]),
            preprocessor=str(preprocessor["ModelDataUrl"]),
            hostnames=(
                str(preprocessor.get("ContainerHostname", "preprocessor")),
                str(mme.get("ContainerHostname", "model")),
            ),
            options=self.options,
        )

    def endpoint_stats(self) -> EndpointStats:
        """The endpoint's counters and tiers (asked of its process)."""
        if self._endpoint is None:
            raise RuntimeError("the local stack is not running")
        stats: EndpointStats = self._endpoint.call("stats")
        return stats

    def invocation_timings(self, *, start: bool = False) -> list[int]:
        """Time each invocation inside the endpoint's process (its ASGI app, request in to
        response out), for benchmarks: ``start=True`` starts afresh; otherwise the times
        taken since (ns) are returned and timing stops."""
        if self._endpoint is None:
            raise RuntimeError("the local stack is not running")
        taken: list[int] = self._endpoint.call("timings", start)
        return taken

    def dead(self) -> str | None:
        """What went wrong if a process of the stack ended on its own, else None."""
        for process in (self._aws, self._dynamodb, self._endpoint):
            if process is not None and process.exit_code is not None:
                return f"the local stack's {process.role} process ended (exit code {process.exit_code})"
        return None

    def request_trace(
        self, *, start: bool = False, apart: Mapping[str, str] | None = None
    ) -> dict[str, Any] | None:
        """Count and time every request the aws process serves, by operation and caller
        (diagnostics, off until started: :mod:`.trace`). ``start=True`` starts afresh,
        counting User-Agents containing a key of ``apart`` as that caller; otherwise the
        report since then is returned (None if never started) and tracing stops."""
        if self._aws is None or self._dynamodb is None:
            raise RuntimeError("the local stack is not running")
        if start:
            for process in (self._aws, self._dynamodb):
                process.call("trace_start", dict(apart or {}))
            return None
        reports = [p.call("trace_report", True) for p in (self._aws, self._dynamodb)]
        return merge_reports([r for r in reports if r is not None]) if any(reports) else None

    def processes(self) -> dict[str, int]:
        """The stack's processes by role: ``functions`` (this one: the functions, their
        event routing and the HTTP API), ``aws``, ``dynamodb`` and ``endpoint``; the job
        workers are the aws process's children."""
        found = {"functions": os.getpid()}
        roles = (("aws", self._aws), ("dynamodb", self._dynamodb), ("endpoint", self._endpoint))
        for role, process in roles:
            if process is not None and process.pid is not None:
                found[role] = process.pid
        return found

    def _outputs(self, stack: ResolvedTemplate, clients: _Clients) -> dict[str, str]:
        registry_table = stack.outputs.get("RegistryTable", "")
        from citymodels.registry import Registry

        registry = Registry(registry_table, client=clients.dynamodb)
        secret = self._kept_admin_key(registry)
        if secret is None:
            secret, _ = registry.create_key(["*"], admin=True, description="local stack admin key")
            if self.options.persist:
                path = self.options.state_dir / "admin-key"
                path.write_text(secret + "\n", encoding="utf-8")
                path.chmod(0o600)
        assert self._api_server is not None and self.aws_url is not None
        outputs = dict(stack.outputs)
        outputs["ApiUrl"] = f"{self._api_server.url}/{stack.api_stage}/"
        outputs["AwsEndpointUrl"] = self.aws_url
        outputs["AdminApiKey"] = secret
        if "FailureQueue" in clients.queue_urls:
            outputs.setdefault("FailureQueueUrl", clients.queue_urls["FailureQueue"])
        for name in PARAMETER_OUTPUTS:  # where uploads land; how long aliases are cached
            if name in stack.parameters:
                outputs.setdefault(name, str(stack.parameters[name]))
        return outputs

    def _kept_admin_key(self, registry: Any) -> str | None:
        """The admin key of a restored stack, if the registry still honours it."""
        if not self.options.persist:
            return None
        try:
            secret = (self.options.state_dir / "admin-key").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return secret if registry.key_for_secret(secret) is not None else None

    # -- helpers for tests, the demo and benchmarks -----------------------------------

    def wait_idle(self, timeout: float = 60.0, settle: float = 0.3) -> None:
        """Wait until no event is being handled and no job runs (for ``settle`` seconds)."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            busy = self.router is not None and self.router.busy
            if not busy:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            else:
                quiet_since = None
            time.sleep(0.05)
        raise TimeoutError(f"the local stack was still busy after {timeout} s")


class _Clients:
    """boto3 clients on the local AWS endpoint."""

    def __init__(self, url: str, dynamodb_url: str) -> None:
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
        )
        # Many pollers share these clients: size the connection pool for them. The
        # User-Agent tells the stack's own calls from the functions' (bench --trace).
        config = Config(
            max_pool_connections=64,
            retries={"mode": "standard", "max_attempts": 3},
            user_agent_extra=LOCAL_STACK_AGENT,
        )
        self.s3 = session.client("s3", endpoint_url=url, config=config)
        self.dynamodb = session.client("dynamodb", endpoint_url=dynamodb_url, config=config)
        self.sqs = session.client("sqs", endpoint_url=url, config=config)
        self.events = session.client("events", endpoint_url=url, config=config)
        self.cloudwatch = session.client("cloudwatch", endpoint_url=url, config=config)
        self.queue_urls: dict[str, str] = {}


def _both(aws: Restored | None, dynamodb: Restored | None) -> Restored | None:
    """What the aws and DynamoDB processes restored, as one."""
    if aws is None or dynamodb is None:
        return aws or dynamodb
    return Restored(
        snapshot=aws.snapshot or dynamodb.snapshot,
        records=aws.records + dynamodb.records,
        skipped=aws.skipped + dynamodb.skipped,
        seconds=max(aws.seconds, dynamodb.seconds),
    )


def _load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def write_outputs(outputs: Mapping[str, str], path: Path) -> None:
    """Write the stack outputs as JSON (what the CLI's ``--outputs`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(outputs), indent=2) + "\n", encoding="utf-8")


__all__ = ["ACCOUNT_ID", "LocalOptions", "LocalStack", "PortInUse", "write_outputs"]
