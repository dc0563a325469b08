"""The local stack's processes: no single GIL carries everything.

:class:`~.stack.LocalStack` runs in the process that starts it (``local up``, the test
fixture, a benchmark) and hosts the functions, their event routing and the HTTP API.
It starts three more, each a fresh interpreter (``spawn``) serving one port:

- **dynamodb** (:func:`serve_dynamodb`): moto's DynamoDB and its kept state
  (:func:`~.aws.build_dynamodb_app`). moto's DynamoDB is not thread-safe, so its
  requests run one at a time; on an interpreter lock of their own, a request holds
  that turn only for its own work. The functions call it directly
  (``AWS_ENDPOINT_URL_DYNAMODB``).
- **aws** (:func:`serve_aws`): the one AWS endpoint, ``AwsEndpointUrl``: moto, the
  SageMaker job service (whose job workers are this process's children), the S3
  events and the kept state (:mod:`.aws`). Invocations it receives are forwarded to
  the endpoint process (:class:`~.aws.RemoteEndpoint`), DynamoDB requests to the
  dynamodb process (:class:`~.aws.Forwarder`).
- **endpoint** (:func:`serve_endpoint`): the multi-model endpoint's invocations
  (:class:`~.aws.InvocationsApp` over :class:`~.mme.MultiModelEndpoint`), which loads
  models from the aws process's S3 and publishes its metrics to its CloudWatch. The
  functions call it directly (``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``).

A child is driven through a pipe (:class:`ServiceProcess`): it answers ``ready`` with
what the parent needs (its URL), then serves commands until ``stop``, or until the
pipe closes because the parent died, and closes what it holds either way (the aws
and dynamodb processes take their snapshots). Ctrl-C reaches the whole process group: children ignore
SIGINT and let the parent stop them in order.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from citymodels_devkit.local.aws import LocalAwsServer

log = logging.getLogger("citymodels.local")

LOCAL_STACK_AGENT = "cm-local-stack"
"""In the User-Agent of the stack's own calls: event routing, endpoint loads, metrics."""


class PortInUse(OSError):
    """A port of the local stack is taken.

    Attributes
    ----------
    which
        ``"aws"`` (the AWS endpoint, ``LocalOptions.aws_port``) or ``"api"`` (the HTTP API).
    host, port
        Where it could not listen.
    """

    def __init__(self, which: str, host: str, port: int) -> None:
        name = "the AWS endpoint" if which == "aws" else "the HTTP API"
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} ({name}) is already in use")
        self.which, self.host, self.port = which, host, port

    def __reduce__(self) -> tuple[Any, ...]:  # raised in a child, re-raised in the parent
        return (PortInUse, (self.which, self.host, self.port))


def listen(app: Any, host: str, port: int, which: str) -> LocalAwsServer:
    """Serve ``app`` at ``host:port``; a taken port is :class:`PortInUse`."""
    try:
        return LocalAwsServer(app, host, port).start()
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise PortInUse(which, host, port) from err
        raise


class Service(Protocol):
    """What a child process runs: built from its spec, then driven by commands."""

    def ready(self) -> Any:
        """What the parent is told once the service serves (picklable)."""

    def command(self, name: str, *args: Any) -> Any:
        """Run one command of the parent; return its answer (picklable)."""

    def close(self) -> None:
        """Stop serving and release everything."""


class ChildFailed(RuntimeError):
    """A child process could not start, or a command failed in it."""


def _child_main(
    build: Callable[[Any], Service],
    preload: Callable[[], None] | None,
    conn: Connection,
    log_level: int,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us in order
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("citymodels").setLevel(log_level)
    if preload is not None:  # while the parent gets the spec ready
        preload()
    try:
        _, spec = conn.recv()  # ("build", spec)
    except (EOFError, OSError):
        return
    try:
        service = build(spec)
    except BaseException as err:
        conn.send(("failed", _portable(err), traceback.format_exc()))
        return
    try:
        conn.send(("ready", service.ready(), ""))
        while True:
            try:
                name, args = conn.recv()
            except (EOFError, OSError):
                log.warning("the local stack's main process is gone: stopping")
                return
            if name == "stop":
                return
            try:
                conn.send(("ok", service.command(name, *args), ""))
            except Exception as err:
                conn.send(("failed", _portable(err), traceback.format_exc()))
    finally:
        service.close()
        with contextlib.suppress(OSError):
            conn.send(("stopped", None, ""))


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling, else a :class:`ChildFailed` saying what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return ChildFailed(f"{type(err).__name__}: {err}")
    return err


class ServiceProcess:
    """One child process of the local stack, and the pipe that drives it.

    Parameters
    ----------
    role
        ``"aws"``, ``"dynamodb"`` or ``"endpoint"``: the process's name
        (``citymodels-{role}``).
    build
        A module-level function building the :class:`Service` from ``spec`` (it runs
        in the child).
    spec
        Everything the child needs (picklable).
    """

    def __init__(
        self,
        role: str,
        build: Callable[[Any], Service],
        preload: Callable[[], None] | None = None,
    ) -> None:
        self.role, self._build, self._preload = role, build, preload
        self._process: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id (None before :meth:`spawn`)."""
        return None if self._process is None else int(self._process.pid)

    @property
    def exit_code(self) -> int | None:
        """The child's exit code once it ended (None while it runs or before start)."""
        return None if self._process is None else self._process.exitcode

    def spawn(self) -> ServiceProcess:
        """Start the interpreter: it imports what its service needs (``preload``) while
        the caller gets the spec ready for :meth:`start`."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        level = logging.getLogger("citymodels").getEffectiveLevel()
        self._process = context.Process(
            target=_child_main,
            args=(self._build, self._preload, child, level),
            name=f"citymodels-{self.role}",
        )
        self._process.start()
        child.close()
        self._conn = parent
        return self

    def start(self, spec: Any, timeout: float = 120.0) -> Any:
        """Build the service from ``spec`` in the child (spawned first if it is not);
        return what it is ``ready`` with.

        Raises
        ------
        Exception
            What the child raised while building its service (e.g. :class:`PortInUse`).
        ChildFailed
            It died or did not get ready within ``timeout``.
        """
        if self._process is None:
            self.spawn()
        assert self._conn is not None
        try:
            self._conn.send(("build", spec))
            return self._receive(timeout, "start")
        except BaseException:
            self.kill()
            raise

    def call(self, name: str, *args: Any, timeout: float = 60.0) -> Any:
        """Run command ``name`` in the child; return its answer (its exception is raised)."""
        with self._lock:
            if self._conn is None:
                raise ChildFailed(f"the {self.role} process is not running")
            self._conn.send((name, args))
            return self._receive(timeout, name)

    def _receive(self, timeout: float, what: str) -> Any:
        assert self._conn is not None
        try:
            if not self._conn.poll(timeout):
                raise ChildFailed(
                    f"the {self.role} process did not answer {what} in {timeout:.0f} s"
                )
            kind, value, trace = self._conn.recv()
        except (EOFError, OSError) as err:
            code = self._process.exitcode if self._process is not None else None
            raise ChildFailed(f"the {self.role} process died (exit code {code})") from err
        if kind == "failed":
            log.debug("in the %s process:\n%s", self.role, trace)
            raise value
        return value

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the child to stop, wait for it (then kill it after ``timeout``)."""
        if self._process is None:
            return
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("stop", ()))
                    if self._conn.poll(timeout):
                        self._conn.recv()
                except (EOFError, OSError):
                    pass
            self._process.join(timeout=10)
        self.kill()

    def kill(self) -> None:
        """Kill the child if it still runs; forget it."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


# -- the aws process ---------------------------------------------------------------------


@dataclass(frozen=True)
class AwsSpec:
    """What the aws process is built from (see :func:`~.aws.build_aws_app`)."""

    host: str
    port: int
    event_buckets: tuple[str, ...]
    job_workers: int
    wsgi_workers: int
    state_dir: Path | None
    snapshot_interval: float
    dynamodb_url: str | None = None


@dataclass(frozen=True)
class AwsReady:
    """What the aws process answers once it serves."""

    url: str
    restored: Any  # persistence.Restored | None


class _MotoService:
    """A process serving moto (aws, dynamodb): its app on a port, and the commands
    ``checkpoint``, ``trace_start`` and ``trace_report``; closing it stops the server,
    which closes the app (its snapshot; the aws app's job workers)."""

    def __init__(self, app: Any, host: str, port: int, which: str) -> None:
        self.app = app
        try:
            self.server = listen(app, host, port, which)
        except BaseException:
            app.close()
            raise

    def ready(self) -> AwsReady:
        return AwsReady(self.server.url, self.app.restored)

    def command(self, name: str, *args: Any) -> Any:
        from citymodels_devkit.local.trace import CONTROL

        if name == "checkpoint":
            self.app.checkpoint()
        elif name == "trace_start":  # (apart,): trace every request from now on (.trace)
            CONTROL.start(*args)
        elif name == "trace_report":  # (stop,): what was traced; stop tracing if asked
            return CONTROL.take(*args)
        else:
            raise ChildFailed(f"unknown command {name!r}")
        return None

    def close(self) -> None:
        self.server.stop()


class _AwsService(_MotoService):
    def __init__(self, spec: AwsSpec) -> None:
        from citymodels_devkit.local.aws import build_aws_app

        app = build_aws_app(
            event_buckets=spec.event_buckets,
            max_job_workers=spec.job_workers,
            wsgi_workers=spec.wsgi_workers,
            state_dir=spec.state_dir,
            snapshot_interval=spec.snapshot_interval,
            dynamodb_url=spec.dynamodb_url,
        )
        super().__init__(app, spec.host, spec.port, "aws")

    def command(self, name: str, *args: Any) -> Any:
        from citymodels_devkit.local.aws import RemoteEndpoint

        if name == "register_endpoint":
            endpoint_name, url = args
            self.app.register_endpoint(endpoint_name, RemoteEndpoint(url, endpoint_name))
            return None
        return super().command(name, *args)


def preload_aws() -> None:
    """Import moto's server and the backends the template uses (the aws process's start)."""
    from moto.backends import get_backend
    from moto.moto_server import werkzeug_app  # noqa: F401

    from citymodels_devkit.local import aws  # noqa: F401

    for service in ("s3", "dynamodb", "sqs", "events", "cloudwatch", "logs", "iam", "ssm"):
        get_backend(service)


def serve_aws(spec: AwsSpec) -> _AwsService:
    """Build the aws process's service (runs in the child)."""
    return _AwsService(spec)


# -- the DynamoDB process ----------------------------------------------------------------


@dataclass(frozen=True)
class DynamoDBSpec:
    """What the DynamoDB process is built from (see :func:`~.aws.build_dynamodb_app`).

    Attributes
    ----------
    host
        Where it listens (on a free port).
    wsgi_workers
        Threads serving moto.
    state_dir, adopt_from, snapshot_interval
        Where DynamoDB's state is kept (None: in memory only), the directory it is
        adopted from while ``state_dir`` holds nothing, and the snapshots' period.
    """

    host: str
    wsgi_workers: int
    state_dir: Path | None
    adopt_from: Path | None
    snapshot_interval: float


def preload_dynamodb() -> None:
    """Import moto's server and its DynamoDB (the DynamoDB process's start)."""
    from moto.backends import get_backend
    from moto.moto_server import werkzeug_app  # noqa: F401

    from citymodels_devkit.local import aws  # noqa: F401

    get_backend("dynamodb")


def serve_dynamodb(spec: DynamoDBSpec) -> _MotoService:
    """Build the DynamoDB process's service (runs in the child)."""
    from citymodels_devkit.local.aws import build_dynamodb_app

    app = build_dynamodb_app(
        wsgi_workers=spec.wsgi_workers,
        state_dir=spec.state_dir,
        adopt_from=spec.adopt_from,
        snapshot_interval=spec.snapshot_interval,
    )
    return _MotoService(app, spec.host, 0, "dynamodb")


# -- the endpoint process ----------------------------------------------------------------


@dataclass(frozen=True)
class EndpointSpec:
    """What the endpoint process is built from.

    Attributes
    ----------
    name
        The endpoint's name (the template's ``Endpoint``).
    aws_url
        The aws process: models and the preprocessor are read from its S3, metrics
        go to its CloudWatch.
    models, preprocessor
        ``s3://`` locations: the MultiModel container's ``ModelDataUrl`` prefix and the
        preprocessor container's artifact.
    hostnames
        The two containers' ``ContainerHostname`` (preprocessor, model).
    options
        The stack's :class:`~.stack.LocalOptions` (bounds, work directory, metrics period).
    """

    name: str
    aws_url: str
    models: str
    preprocessor: str
    hostnames: tuple[str, str]
    options: Any  # stack.LocalOptions


class _EndpointService:
    def __init__(self, spec: EndpointSpec) -> None:
        import shutil

        import boto3
        from botocore.config import Config

        from citymodels.layout import parse_s3_uri
        from citymodels_devkit.local.aws import InvocationsApp
        from citymodels_devkit.local.mme.models import (
            EndpointOptions,
            ModelArtifactMissing,
            MultiModelEndpoint,
        )
        from citymodels_devkit.local.template import REGION

        opts = spec.options
        config = Config(
            max_pool_connections=32,
            retries={"mode": "standard", "max_attempts": 3},
            user_agent_extra=LOCAL_STACK_AGENT,
        )
        session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
        )
        s3 = session.client("s3", endpoint_url=spec.aws_url, config=config)
        self._cloudwatch = session.client("cloudwatch", endpoint_url=spec.aws_url, config=config)
        bucket, prefix = parse_s3_uri(spec.models)
        pre_bucket, pre_key = parse_s3_uri(spec.preprocessor)

        def fetch(target_model: str) -> bytes:
            try:
                return bytes(
                    s3.get_object(Bucket=bucket, Key=f"{prefix}{target_model}")["Body"].read()
                )
            except s3.exceptions.NoSuchKey as err:
                raise ModelArtifactMissing(f"s3://{bucket}/{prefix}{target_model}") from err

        artifact = s3.get_object(Bucket=pre_bucket, Key=pre_key)["Body"].read()
        cache_dir = opts.work_dir / "endpoint"
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        self.endpoint = MultiModelEndpoint(
            spec.name,
            fetch_model=fetch,
            preprocessor=artifact,
            cache_dir=cache_dir,
            options=EndpointOptions.from_local(opts, container_hostnames=spec.hostnames),
        )
        self.app = InvocationsApp()
        self.app.register_endpoint(spec.name, self.endpoint)
        self._stop = threading.Event()
        try:
            self.server = listen(self.app, opts.host, 0, "endpoint")
        except BaseException:
            self.endpoint.close()
            raise
        self._metrics = threading.Thread(
            target=self._publish_metrics,
            args=(opts.metrics_period_seconds,),
            name="mme metrics",
            daemon=True,
        )
        self._metrics.start()

    def ready(self) -> str:
        return self.server.url

    def command(self, name: str, *args: Any) -> Any:
        if name == "stats":
            return self.endpoint.stats()
        if name == "timings":  # (start,): start timing invocations, or take the times
            taken, self.app.timings = self.app.timings or [], [] if args[0] else None
            return taken
        raise ChildFailed(f"unknown command {name!r}")

    def _publish_metrics(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                for batch in self.endpoint.drain_metrics():
                    self._cloudwatch.put_metric_data(**batch)
            except Exception as err:
                log.debug("metrics not published: %s", err)

    def close(self) -> None:
        self._stop.set()
        self._metrics.join(timeout=5)
        self.server.stop()
        self.app.close()
        self.endpoint.close()


def preload_endpoint() -> None:
    """Import the endpoint and boto3 (the endpoint process's start)."""
    import boto3  # noqa: F401

    from citymodels_devkit.local.mme import models  # noqa: F401


def serve_endpoint(spec: EndpointSpec) -> _EndpointService:
    """Build the endpoint process's service (runs in the child)."""
    return _EndpointService(spec)


__all__ = [
    "LOCAL_STACK_AGENT",
    "AwsReady",
    "AwsSpec",
    "ChildFailed",
    "DynamoDBSpec",
    "EndpointSpec",
    "PortInUse",
    "ServiceProcess",
    "listen",
    "preload_aws",
    "preload_dynamodb",
    "preload_endpoint",
    "serve_aws",
    "serve_dynamodb",
    "serve_endpoint",
]
