"""The event-driven pipeline: upload → processing job → training job → quality gate → alias.

Each Lambda function of the flow (docs/design.md §1) parses its event and calls one method
of :class:`Pipeline`; everything that happens on each event (docs/application.md,
"What happens on each event") is here, where it is tested without Lambda:

| event | method |
|---|---|
| upload (``Object Created``) | :meth:`Pipeline.onboard` |
| ``SageMaker Processing Job State Change`` | :meth:`Pipeline.on_processing_state` |
| ``SageMaker Training Job State Change`` | :meth:`Pipeline.on_training_state` |
| a message on the capacity retry queue | :meth:`Pipeline.resume` |

Every method is safe to call twice with the same event (EventBridge and Lambda deliver
at least once): the run id is minted from the upload event itself, the registry's
writes are conditional on the run's status (``expected_status``), so a stale or
duplicated event never moves a run backwards, and a job created twice gets
SageMaker's ``ResourceInUse``, which means "already started".

Expected outcomes (a bad upload, a failed job, a gate refusal) are recorded in the
registry and returned as an :class:`Outcome`, whose ``metrics`` the handler publishes;
anything unexpected is raised, so Lambda retries and the failure destination sees it.

Standard library and boto3 only (this runs in Lambda): no pandas, no numpy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from botocore.exceptions import ClientError

from citymodels import layout
from citymodels.endpoint import EndpointClient
from citymodels.errors import CityModelsError, InvalidCityId, InvalidKey
from citymodels.gate import GateResult, run_gate
from citymodels.jobs import job_name, parse_job_name, validate_stack_name
from citymodels.registry import (
    DUPLICATE,
    FAILED,
    IN_PROGRESS,
    NOT_PUBLISHED,
    PROCESSING,
    PUBLISHED,
    REJECTED,
    TRAINING,
    Registry,
    Run,
    UnknownRun,
    cutover_lead,
)
from citymodels.schema import FEATURE_DIM, SCHEMA_VERSION
from citymodels.settings import ConfigurationError, env, env_float
from citymodels.validation import (
    DEFAULT_LIMITS,
    ONBOARD_LIMITS,
    Problem,
    ValidationReport,
    validate_upload,
)
from citymodels.versions import mint_version

# Container paths of the processing job (preprocessing/preprocess.py's defaults).
PROCESSING_ROOT = "/opt/ml/processing"
PROCESSING_ENTRYPOINT = ("python3", f"{PROCESSING_ROOT}/input/code/preprocess.py")
TRAINING_CHANNELS = ("train", "validation", "test")
TRAINING_CONTENT_TYPE = "text/csv;label_size=1"
"""Linear Learner's CSV channels: label in the first column."""

CAPACITY_FIRST_DELAY = 60
CAPACITY_MAX_DELAY = 900  # SQS's longest message delay
MAX_CAPACITY_RETRIES = 100
"""About a day of retries (60 s doubling to 900 s): then the run is FAILED, not forgotten."""
WAITING_FOR_CAPACITY = "waiting for SageMaker capacity"
THROTTLING_CODES = ("ThrottlingException", "Throttling", "TooManyRequestsException")
"""SageMaker's answers to too many calls: like a server error (5xx), a job start that
gets one waits on the retry queue, as for capacity (botocore has already retried)."""
MAX_REASON_CHARS = 2000

JOB_COMPLETED = "Completed"
JOB_FAILED = "Failed"
JOB_STOPPED = "Stopped"
TERMINAL_JOB_STATUSES = (JOB_COMPLETED, JOB_FAILED, JOB_STOPPED)


class PipelineError(CityModelsError):
    """Base class of the pipeline's unexpected errors (raised, never recorded)."""

    code = "pipeline_error"


class ModelOverwriteRefused(PipelineError):
    """``mme/{city}/{version}.tar.gz`` already holds a different model (never overwritten)."""

    code = "model_overwrite_refused"


class Action(str, Enum):
    """What the pipeline did with an event."""

    IGNORED = "ignored"
    """Not ours (another stack's job, a non-terminal status, not an upload)."""
    STALE = "stale"
    """A redelivered or out-of-date event; the run had already moved on."""
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    STARTED = "started"
    ALREADY_STARTED = "already_started"
    WAITING_FOR_CAPACITY = "waiting_for_capacity"
    FAILED = "failed"
    PUBLISHED = "published"
    NOT_PUBLISHED = "not_published"
    RUNNING = "running"
    """The reconciler found the run's job still running within its own time limit."""
    STUCK = "stuck"
    """The reconciler found the run stuck and could not move it on yet (see the message)."""
    REPLAY_FAILED = "replay_failed"
    """A FailureQueue message failed again when replayed (it stays in the queue)."""


@dataclass
class Outcome:
    """What one event led to, for the handler's logs, metrics and return value.

    Attributes
    ----------
    action
        What was done.
    message
        One line for a person.
    city, run
        The run concerned, when there is one (the run id is also its version).
    status
        The run's status afterwards (registry status), when known.
    job_name
        The SageMaker job concerned, when there is one.
    metrics
        CloudWatch metrics to emit, name → count (the handler adds them with
        Powertools Metrics; the domain code does not publish anything itself).
    details
        Further JSON-ready facts (the gate's numbers, the retry delay...).
    """

    action: Action
    message: str
    city: str = ""
    run: str = ""
    status: str = ""
    job_name: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_run(
        cls,
        action: Action,
        message: str,
        record: Run,
        *,
        status: str | None = None,
        job_name: str = "",
        details: dict[str, Any] | None = None,
    ) -> Outcome:
        """An outcome about ``record``: its city and run, and its status unless given."""
        return cls(
            action,
            message,
            city=record.city,
            run=record.run,
            status=record.status if status is None else status,
            job_name=job_name,
            details=details or {},
        )

    @property
    def version(self) -> str:
        """The version id of the run (the run id)."""
        return self.run

    def correlation_ids(self) -> dict[str, str]:
        """Return the ids a log line about this outcome carries (city, run, version, job)."""
        ids = {"city": self.city, "run": self.run, "version": self.run, "job_name": self.job_name}
        return {key: value for key, value in ids.items() if value}

    def count(self, metric: str, value: float = 1) -> Outcome:
        """Add ``value`` to a metric; return the outcome (for chaining)."""
        self.metrics[metric] = self.metrics.get(metric, 0) + value
        return self

    def to_dict(self) -> dict[str, Any]:
        """Return the outcome as a JSON-ready mapping (the handler's return value)."""
        return {
            "action": self.action.value,
            "message": self.message,
            "city": self.city or None,
            "run": self.run or None,
            "status": self.status or None,
            "job_name": self.job_name or None,
            "metrics": dict(self.metrics),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class UploadEvent:
    """The facts of an S3 ``Object Created`` event the pipeline uses.

    Attributes
    ----------
    bucket, key
        Where the upload is (the key URL-decoded).
    time
        The event's ``time`` (ISO 8601).
    sequencer
        ``detail.object.sequencer``: with ``time``, mints the run id.
    size
        ``detail.object.size``: an upload over the limit is rejected unread.
    version_id
        ``detail.object.version-id`` (a versioned bucket): the version validated and
        trained on, whatever is uploaded to the key afterwards.
    """

    bucket: str
    key: str
    time: str
    sequencer: str
    size: int | None = None
    version_id: str | None = None


@dataclass(frozen=True)
class RetryMessage:
    """A job start postponed by ``ResourceLimitExceeded``, on the capacity retry queue.

    Attributes
    ----------
    kind
        ``processing`` or ``training``.
    city, run, job_name
        The job to create again.
    retries
        How many times it was postponed so far (the next delay doubles with it).
    """

    kind: str
    city: str
    run: str
    job_name: str
    retries: int

    KINDS = ("processing", "training")

    def to_json(self) -> str:
        """Return the message body."""
        return json.dumps(
            {
                "kind": self.kind,
                "city": self.city,
                "run": self.run,
                "job_name": self.job_name,
                "retries": self.retries,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, body: str) -> RetryMessage:
        """Parse a message body.

        Raises
        ------
        ValueError
            The body is not a retry message (a bug, not a user mistake: raised).
        """
        try:
            data = json.loads(body)
            message = cls(
                kind=str(data["kind"]),
                city=str(data["city"]),
                run=str(data["run"]),
                job_name=str(data["job_name"]),
                retries=int(data["retries"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"not a capacity retry message: {body[:200]!r}") from err
        if message.kind not in cls.KINDS:
            raise ValueError(f"unknown retry kind {message.kind!r}; expected one of {cls.KINDS}")
        return message


FIXED_HYPERPARAMETERS: Mapping[str, str] = {
    "feature_dim": str(FEATURE_DIM),
    "predictor_type": "regressor",
}
"""The Linear Learner hyperparameters that are not choices: the schema's encoded
features, and price regression (the quality gate compares MAEs)."""
HYPERPARAMETER_VARIABLES: Mapping[str, str] = {
    "mini_batch_size": "LINEAR_LEARNER_MINI_BATCH_SIZE",
    "epochs": "LINEAR_LEARNER_EPOCHS",
    "num_models": "LINEAR_LEARNER_NUM_MODELS",
    "loss": "LINEAR_LEARNER_LOSS",
}
"""The ones that are: hyperparameter → the variable carrying it (template parameters
``LinearLearnerMiniBatchSize``, ``LinearLearnerEpochs``...)."""


@dataclass(frozen=True)
class ProcessingJobConfig:
    """The processing job's settings (``SKLEARN_IMAGE_URI``, ``PROCESSING_*``)."""

    role_arn: str
    image_uri: str
    instance_type: str
    code_uri: str
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3600


@dataclass(frozen=True)
class TrainingJobConfig:
    """The training job's settings (``LINEAR_LEARNER_IMAGE_URI``, ``TRAINING_*``...)."""

    role_arn: str
    image_uri: str
    instance_type: str
    hyperparameters: Mapping[str, str]
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3600


@dataclass(frozen=True)
class PipelineSettings:
    """What the pipeline needs to know about its stack.

    Each function has only the environment variables of its own steps
    (``citymodels.settings``), so the job settings are optional here; a step whose
    settings are missing raises :class:`~citymodels.settings.ConfigurationError`.
    """

    stack: str
    bucket: str
    registry_table: str = ""
    raw_prefix: str = layout.RAW_PREFIX
    processing: ProcessingJobConfig | None = None
    training: TrainingJobConfig | None = None
    retry_queue_url: str = ""
    endpoint_name: str = ""
    gate_tolerance: float = 0.05
    alias_cache_seconds: float = 0.0

    def __post_init__(self) -> None:
        validate_stack_name(self.stack)

    @classmethod
    def from_env(
        cls,
        *,
        uploads: bool = False,
        processing: bool = False,
        training: bool = False,
        gate: bool = False,
    ) -> PipelineSettings:
        """Read the settings of a function's steps from its environment (``template.yaml``).

        Each function is given only the variables of its own steps
        (:mod:`citymodels.settings` lists them), so it names its steps here; the
        variables are read now, at import, so a missing one fails there.

        Parameters
        ----------
        uploads
            The function receives uploads: ``RAW_PREFIX``.
        processing
            It starts processing jobs: ``SKLEARN_IMAGE_URI``, ``PROCESSING_*``.
        training
            It starts training jobs: ``LINEAR_LEARNER_*``, ``TRAINING_INSTANCE_TYPE``.
            Processing and training also read ``SAGEMAKER_ROLE_ARN`` and
            ``CAPACITY_RETRY_QUEUE_URL``.
        gate
            It runs the quality gate and moves the alias: ``ENDPOINT_NAME``,
            ``GATE_TOLERANCE``, ``ALIAS_CACHE_SECONDS`` (the cut-over's lead).

        Raises
        ------
        ConfigurationError
            A variable of these steps is missing or malformed (the error names it).
        """
        values: dict[str, Any] = {
            "stack": env("STACK_NAME"),
            "bucket": env("DATA_BUCKET"),
            "registry_table": env("REGISTRY_TABLE"),
        }
        if uploads:
            values["raw_prefix"] = env("RAW_PREFIX")
        if processing or training:
            role_arn = env("SAGEMAKER_ROLE_ARN")
            values["retry_queue_url"] = env("CAPACITY_RETRY_QUEUE_URL")
        if processing:
            values["processing"] = ProcessingJobConfig(
                role_arn=role_arn,
                image_uri=env("SKLEARN_IMAGE_URI"),
                instance_type=env("PROCESSING_INSTANCE_TYPE"),
                code_uri=env("PROCESSING_CODE_URI"),
            )
        if training:
            values["training"] = TrainingJobConfig(
                role_arn=role_arn,
                image_uri=env("LINEAR_LEARNER_IMAGE_URI"),
                instance_type=env("TRAINING_INSTANCE_TYPE"),
                hyperparameters={
                    **FIXED_HYPERPARAMETERS,
                    **{name: env(variable) for name, variable in HYPERPARAMETER_VARIABLES.items()},
                },
            )
        if gate:
            values["endpoint_name"] = env("ENDPOINT_NAME")
            values["gate_tolerance"] = env_float("GATE_TOLERANCE")
            values["alias_cache_seconds"] = env_float("ALIAS_CACHE_SECONDS")
        return cls(**values)


def _versioned(version_id: str | None) -> bool:
    """A real version id (S3 says ``null`` for objects of an unversioned bucket)."""
    return bool(version_id) and version_id != "null"


def capacity_delay(retries: int) -> int:
    """Return the delay before retry number ``retries + 1``: 60 s doubling to 900 s."""
    return min(CAPACITY_FIRST_DELAY << min(retries, 10), CAPACITY_MAX_DELAY)


def _error_code(err: ClientError) -> str:
    """The code of an AWS error that botocore's model has no exception class for."""
    return str(err.response.get("Error", {}).get("Code", ""))


def _transient(err: ClientError) -> bool:
    """A throttle or a server error: the same request may succeed later."""
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return _error_code(err) in THROTTLING_CODES or status >= 500


def _error_message(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Message", "")) or str(err)


def _clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Pipeline:
    """The domain logic of the onboard, train, publish and retry functions.

    Parameters
    ----------
    settings
        The stack's settings.
    s3, sagemaker, sqs
        boto3 clients; each is created on first use when omitted. Tests pass their own.
    registry
        The registry; built from ``settings.registry_table`` when omitted.
    endpoint
        The endpoint client for the quality gate; built from ``settings.endpoint_name``
        when omitted.
    """

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        s3: Any | None = None,
        sagemaker: Any | None = None,
        sqs: Any | None = None,
        registry: Registry | None = None,
        endpoint: EndpointClient | None = None,
    ) -> None:
        self.settings = settings
        self._s3 = s3
        self._sagemaker = sagemaker
        self._sqs = sqs
        self._registry = registry
        self._endpoint = endpoint

    # -- clients (created once, on first use: a function never builds what it never calls)

    @property
    def s3(self) -> Any:
        """The S3 client."""
        if self._s3 is None:
            self._s3 = _boto3_client("s3")
        return self._s3

    @property
    def sagemaker(self) -> Any:
        """The SageMaker client."""
        if self._sagemaker is None:
            self._sagemaker = _boto3_client("sagemaker")
        return self._sagemaker

    @property
    def sqs(self) -> Any:
        """The SQS client."""
        if self._sqs is None:
            self._sqs = _boto3_client("sqs")
        return self._sqs

    @property
    def registry(self) -> Registry:
        """The registry."""
        if self._registry is None:
            self._registry = Registry(_required(self.settings.registry_table, "REGISTRY_TABLE"))
        return self._registry

    @property
    def endpoint(self) -> EndpointClient:
        """The multi-model endpoint."""
        if self._endpoint is None:
            self._endpoint = EndpointClient(_required(self.settings.endpoint_name, "ENDPOINT_NAME"))
        return self._endpoint

    # -- upload ----------------------------------------------------------------------

    def onboard(self, upload: UploadEvent) -> Outcome:
        """Handle an upload: reject it, record it as a duplicate, or start its processing job.

        Parameters
        ----------
        upload
            The S3 ``Object Created`` event's facts.

        Returns
        -------
        Outcome
            ``rejected`` (invalid key, city id or CSV: a report is written),
            ``duplicate``, ``started`` / ``already_started`` / ``waiting_for_capacity``
            (the processing job), ``stale`` (a redelivery with nothing left to do) or
            ``ignored`` (not an upload of this stack's bucket and prefix).
        """
        settings = self.settings
        if upload.bucket != settings.bucket or not upload.key.startswith(settings.raw_prefix):
            return Outcome(
                Action.IGNORED,
                f"s3://{upload.bucket}/{upload.key} is not under "
                f"s3://{settings.bucket}/{settings.raw_prefix}",
            ).count("EventIgnored")
        # Minted from the event, not the clock: a redelivered event finds its own run.
        run_id = mint_version(upload.time, upload.sequencer)
        try:
            city = layout.parse_raw_key(upload.key, prefix=settings.raw_prefix).city
        except (InvalidKey, InvalidCityId) as err:
            return self._reject_key(upload, run_id, err)

        run = Run(city=city, run=run_id, key=upload.key, status=PROCESSING, size=upload.size or 0)
        if not self.registry.create_run(run):
            run = self.registry.get_run(city, run_id)
            if run.status != PROCESSING:
                return self._stale(run, f"redelivered upload; the run is {run.status}")
            if run.processing_job:
                return self.start_processing(city, run_id, record=run)
            # The first delivery never named its job (it failed or is still validating):
            # carry on; every step below is idempotent for the same run.

        report, read = self._validate(upload)
        report_key = layout.report_key(city, run_id, "validation")
        self._put_json(report_key, {"key": upload.key, "run": run_id, **report.to_dict()})
        if not report.ok:
            updated = self.registry.update_run(
                city,
                run_id,
                expected_status=[PROCESSING],
                status=REJECTED,
                reason=_clip(report.summary()),
                report_key=report_key,
                sha256=report.sha256,
            )
            if updated is None:
                return self._stale(self.registry.get_run(city, run_id), "run already moved on")
            return Outcome(
                Action.REJECTED,
                report.summary(),
                city=city,
                run=run_id,
                status=REJECTED,
                details={"report_key": report_key},
            ).count("UploadRejected")

        attempt, duplicate = self._attempt_for(city, run_id, report.sha256)
        if duplicate is not None:
            of, reason = duplicate
            updated = self.registry.update_run(
                city,
                run_id,
                expected_status=[PROCESSING],
                status=DUPLICATE,
                reason=reason,
                duplicate_of=of,
                sha256=report.sha256,
                report_key=report_key,
            )
            if updated is None:
                return self._stale(self.registry.get_run(city, run_id), "run already moved on")
            return Outcome(Action.DUPLICATE, reason, city=city, run=run_id, status=DUPLICATE).count(
                "UploadDuplicate"
            )

        name = job_name(settings.stack, city, report.sha256, attempt)
        input_key = self._copy_input(upload, city, run_id, read)
        # The job's name is on the run before the job exists, so a redelivery (or a
        # retry after a crash) creates the same job, never a second one; and the job's
        # record is written with it, so the job's events always find the run.
        job_fields: dict[str, Any] = {
            "sha256": report.sha256,
            "attempt": attempt,
            "processing_job": name,
            "input_key": input_key,
            "report_key": report_key,
            "schema_version": SCHEMA_VERSION,
        }
        named = self.registry.name_job(
            city, run_id, name, expected_status=[PROCESSING], **job_fields
        )
        if not named:
            return self._stale(self.registry.get_run(city, run_id), "run already moved on")
        # The transaction answers nothing, but its condition held: the run is the one
        # read or created above, in PROCESSING, with these fields (no read needed).
        named_run = replace(run, **job_fields)
        return self.start_processing(city, run_id, record=named_run).count("UploadAccepted")

    def _reject_key(
        self, upload: UploadEvent, run_id: str, err: InvalidKey | InvalidCityId
    ) -> Outcome:
        # No valid city to file it under in the registry: the report is found by the
        # key's hash, which the uploader can compute.
        digest = hashlib.sha256(upload.key.encode("utf-8")).hexdigest()
        report_key = layout.rejected_report_key(digest)
        self._put_json(
            report_key,
            {
                "ok": False,
                "summary": f"rejected: {err.message}",
                "bucket": upload.bucket,
                "key": upload.key,
                "upload_version": run_id,
                **err.to_dict(),
            },
        )
        return Outcome(
            Action.REJECTED,
            f"rejected: {err.message}",
            details={"report_key": report_key, "key": upload.key},
        ).count("UploadRejected")

    def _validate(self, upload: UploadEvent) -> tuple[ValidationReport, dict[str, str]]:
        """Validate the upload's version (the event's, else the key's current one).

        Returns the report and what was read: the object's ``VersionId`` and ``ETag``.
        """
        if upload.size is not None and upload.size > DEFAULT_LIMITS.max_bytes:
            # Rejected on the event's size alone: the object is never downloaded.
            return validate_upload(iter(()), size=upload.size), {}
        version = {"VersionId": upload.version_id} if _versioned(upload.version_id) else {}
        try:
            answer = self.s3.get_object(Bucket=upload.bucket, Key=upload.key, **version)
        except ClientError as err:
            # NoSuchKey is modelled; a version deleted since is NoSuchVersion (not modelled)
            if not isinstance(err, self.s3.exceptions.NoSuchKey) and (
                _error_code(err) != "NoSuchVersion"
            ):
                raise
            report = ValidationReport(complete=True)
            report.file_problems.append(
                Problem("deleted", "the upload was deleted before it could be read")
            )
            report.problem_counts["deleted"] = 1
            return report, {}
        read = {k: answer[k] for k in ("VersionId", "ETag") if answer.get(k)}
        try:
            # bounded in time too: a pathological file is rejected, not a timed-out function
            return validate_upload(answer["Body"], size=upload.size, limits=ONBOARD_LIMITS), read
        finally:
            answer["Body"].close()

    def _copy_input(self, upload: UploadEvent, city: str, run_id: str, read: dict[str, str]) -> str:
        """Copy the validated bytes to the run's own input key; return that key.

        In a versioned bucket (the template's) the copy names the version read; in
        another, it is made only if the object still has the ETag read, so the job
        never trains on bytes other than those validated.
        """
        name = layout.parse_raw_key(upload.key, prefix=self.settings.raw_prefix).name
        key = layout.input_key(city, run_id, name)
        source = {"Bucket": upload.bucket, "Key": upload.key}
        condition: dict[str, str] = {}
        if _versioned(read.get("VersionId")):
            source["VersionId"] = read["VersionId"]
        elif read.get("ETag"):
            condition["CopySourceIfMatch"] = read["ETag"]
        self.s3.copy_object(Bucket=self.settings.bucket, Key=key, CopySource=source, **condition)
        return key

    def _attempt_for(
        self, city: str, run_id: str, sha256: str
    ) -> tuple[int, tuple[str, str] | None]:
        """Return ``(attempt, None)`` for a run to start, or ``(0, (of, reason))`` for a duplicate."""
        if self.registry.first_attempt(city, sha256, run_id):
            return 1, None  # content never uploaded before: no read needed
        content = self.registry.get_content(city, sha256)
        if content is not None:
            if content.last_run == run_id:
                return content.attempts, None  # this run already counted (a redelivery)
            if content.published_version:
                version = content.published_version
                record = self.registry.get_city(city)
                serving = record.serving and record.current == version
                return 0, (
                    version,
                    f"same content as published version {version}"
                    + (
                        ", which is serving: nothing to do"
                        if serving
                        else "; to serve it again, roll back to that version"
                    ),
                )
            if content.last_run:
                try:
                    last = self.registry.get_run(city, content.last_run)
                except UnknownRun:
                    last = None
                if last is not None and last.status in IN_PROGRESS:
                    return 0, (
                        last.run,
                        f"same content as run {last.run}, which is still {last.status}",
                    )
        # First upload of this content, or its earlier runs failed or were not published.
        return self.registry.record_attempt(city, sha256, run_id), None

    # -- processing job --------------------------------------------------------------

    def processing_request(self, run: Run) -> dict[str, Any]:
        """Return the ``CreateProcessingJob`` request of a run."""
        config = self._processing_config()
        bucket = self.settings.bucket
        return {
            "ProcessingJobName": run.processing_job,
            "RoleArn": config.role_arn,
            "AppSpecification": {
                "ImageUri": config.image_uri,
                "ContainerEntrypoint": list(PROCESSING_ENTRYPOINT),
            },
            "ProcessingInputs": [
                {
                    "InputName": "raw",
                    "S3Input": {
                        # The run's own copy of the validated upload, alone under its
                        # prefix (runs recorded before copies existed read the raw key).
                        "S3Uri": layout.s3_uri(bucket, run.input_key or run.key),
                        "LocalPath": f"{PROCESSING_ROOT}/input/raw",
                        "S3DataType": "S3Prefix",
                        "S3InputMode": "File",
                        "S3DataDistributionType": "FullyReplicated",
                    },
                },
                {
                    "InputName": "code",
                    "S3Input": {
                        "S3Uri": config.code_uri,
                        "LocalPath": f"{PROCESSING_ROOT}/input/code",
                        "S3DataType": "S3Prefix",
                        "S3InputMode": "File",
                        "S3DataDistributionType": "FullyReplicated",
                    },
                },
            ],
            "ProcessingOutputConfig": {
                "Outputs": [
                    {
                        "OutputName": split,
                        "S3Output": {
                            "S3Uri": layout.s3_uri(
                                bucket, layout.processed_prefix(run.city, run.run, split)
                            ),
                            "LocalPath": f"{PROCESSING_ROOT}/output/{split}",
                            "S3UploadMode": "EndOfJob",
                        },
                    }
                    for split in layout.SPLITS
                ]
            },
            "ProcessingResources": {
                "ClusterConfig": {
                    "InstanceCount": 1,
                    "InstanceType": config.instance_type,
                    "VolumeSizeInGB": config.volume_size_gb,
                }
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": config.max_runtime_seconds},
            "Environment": {"CITYMODELS_CITY": run.city, "CITYMODELS_RUN": run.run},
            "Tags": self._tags(run),
        }

    def start_processing(
        self, city: str, run: str, *, retries: int = 0, record: Run | None = None
    ) -> Outcome:
        """Create the run's processing job (again: a duplicate create is harmless).

        Parameters
        ----------
        city, run
            A run in PROCESSING whose job is named (``onboard`` did that).
        retries
            How many times this start was postponed for capacity so far.
        record
            The run as just written or read by the caller (saves reading it again).
        """
        if record is None:
            record = self.registry.get_run(city, run)
        if record.status != PROCESSING or not record.processing_job:
            return self._stale(record, "the run is not waiting for its processing job")
        return self._create_job(
            "processing",
            record,
            record.processing_job,
            lambda: self.sagemaker.create_processing_job(**self.processing_request(record)),
            expected=PROCESSING,
            retries=retries,
        )

    def on_processing_state(self, job_name: str, status: str) -> Outcome:
        """Handle a ``SageMaker Processing Job State Change``.

        Completed → the training job starts and the run is TRAINING (only from
        PROCESSING); Failed / Stopped → FAILED with ``FailureReason`` and
        ``ExitMessage``. Other stacks' jobs and non-terminal statuses are ignored.
        """
        key = self._job_run(job_name, status, "processing")
        if isinstance(key, Outcome):
            return key
        city, run = key
        if status == JOB_COMPLETED:
            # Written without reading the run first: the condition (PROCESSING, and this
            # very job) is the check, and the answer is the run the training job needs.
            updated = self.registry.update_run(
                city,
                run,
                expected_status=[PROCESSING],
                expected_fields={"processing_job": job_name},
                status=TRAINING,
                training_job=job_name,
                reason="",
            )
            if updated is None:
                current = self.registry.get_run(city, run)
                if current.processing_job != job_name:
                    return self._stale(current, f"{job_name} is not this run's processing job")
                if current.status != TRAINING:
                    return self._stale(current, f"the run is {current.status}")
                # TRAINING already: a redelivery, or a retry after the create below failed.
                updated = current
            return self.start_training(city, run, record=updated)
        record = self.registry.get_run(city, run)
        if record.processing_job != job_name:
            return self._stale(record, f"{job_name} is not this run's processing job")
        described = self.sagemaker.describe_processing_job(ProcessingJobName=job_name)
        return self._job_failed("processing", record, job_name, status, described, PROCESSING)

    # -- training job ----------------------------------------------------------------

    def training_request(self, run: Run) -> dict[str, Any]:
        """Return the ``CreateTrainingJob`` request of a run."""
        config = self._training_config()
        bucket = self.settings.bucket
        return {
            "TrainingJobName": run.training_job,
            "RoleArn": config.role_arn,
            "AlgorithmSpecification": {
                "TrainingImage": config.image_uri,
                "TrainingInputMode": "File",
            },
            "HyperParameters": dict(config.hyperparameters),
            "InputDataConfig": [
                {
                    "ChannelName": channel,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": layout.s3_uri(
                                bucket, layout.processed_prefix(run.city, run.run, channel)
                            ),
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "ContentType": TRAINING_CONTENT_TYPE,
                    "CompressionType": "None",
                }
                for channel in TRAINING_CHANNELS
            ],
            "OutputDataConfig": {
                "S3OutputPath": layout.s3_uri(
                    bucket, layout.training_output_prefix(run.city, run.run)
                )
            },
            "ResourceConfig": {
                "InstanceType": config.instance_type,
                "InstanceCount": 1,
                "VolumeSizeInGB": config.volume_size_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": config.max_runtime_seconds},
            "Tags": self._tags(run),
        }

    def start_training(
        self, city: str, run: str, *, retries: int = 0, record: Run | None = None
    ) -> Outcome:
        """Create the run's training job (again: a duplicate create is harmless).

        Parameters
        ----------
        city, run
            A run in TRAINING (its processing job completed).
        retries
            How many times this start was postponed for capacity so far.
        record
            The run as just written or read by the caller (saves reading it again).
        """
        if record is None:
            record = self.registry.get_run(city, run)
        if record.status != TRAINING or not record.training_job:
            return self._stale(record, "the run is not waiting for its training job")
        return self._create_job(
            "training",
            record,
            record.training_job,
            lambda: self.sagemaker.create_training_job(**self.training_request(record)),
            expected=TRAINING,
            retries=retries,
        )

    def on_training_state(self, job_name: str, status: str) -> Outcome:
        """Handle a ``SageMaker Training Job State Change``.

        Completed → :meth:`publish`; Failed / Stopped → FAILED with ``FailureReason``.
        Other stacks' jobs and non-terminal statuses are ignored.
        """
        key = self._job_run(job_name, status, "training")
        if isinstance(key, Outcome):
            return key
        record = self.registry.get_run(*key)
        if record.training_job != job_name or record.status != TRAINING:
            return self._stale(record, f"the run is {record.status}")
        if status == JOB_COMPLETED:
            return self.publish(record.city, record.run, job_name, record=record)
        described = self.sagemaker.describe_training_job(TrainingJobName=job_name)
        return self._job_failed("training", record, job_name, status, described, TRAINING)

    # -- publishing ------------------------------------------------------------------

    def publish(
        self, city: str, run: str, job_name: str | None = None, *, record: Run | None = None
    ) -> Outcome:
        """Copy a trained model to ``mme/``, run the quality gate, and move the alias.

        Parameters
        ----------
        city, run
            A run in TRAINING whose training job completed.
        job_name
            The training job (defaults to the run's).
        record
            The run as the caller just read it (saves reading it again).

        Returns
        -------
        Outcome
            ``published``; ``not_published`` (the gate said no, with its numbers; or a
            newer version was already published: "superseded by version X"); ``stale``.

        Raises
        ------
        ModelOverwriteRefused
            ``mme/{city}/{run}.tar.gz`` already holds a different model.
        """
        if record is None:
            record = self.registry.get_run(city, run)
        name = job_name or record.training_job
        if record.status != TRAINING:
            return self._stale(record, f"the run is {record.status}")
        # One read of the city serves the three questions asked of it: is a newer
        # version published, which version does the gate compare with, and (as the
        # alias move's first read) what the move replaces. A move made meanwhile fails
        # the move's condition and is read again.
        current = self.registry.get_city(city)
        newest = current.newest_published
        if newest and newest > run:
            # No copy, no gate: this model can never be served (the alias only moves
            # forward, and rollback only goes to published versions).
            return self._superseded(record, newest)

        described = self.sagemaker.describe_training_job(TrainingJobName=name)
        artifact = str(described.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""))
        if not artifact:
            raise PipelineError(f"training job {name} completed without ModelArtifacts")
        training_metrics = {
            str(m["MetricName"]): float(m["Value"])
            for m in described.get("FinalMetricDataList", [])
            if "MetricName" in m and "Value" in m
        }
        model_key = self._copy_model(artifact, city, run)

        serving = current.current if current.serving and current.current != run else None
        gate = run_gate(
            s3=self.s3,
            endpoint=self.endpoint,
            bucket=self.settings.bucket,
            city=city,
            version=run,
            current_version=serving,
            tolerance=self.settings.gate_tolerance,
        )
        run_metrics = {**training_metrics, **gate.metrics()}
        # Written with the run's final status (one write, not two): a crash before it
        # leaves the run TRAINING, and the redelivered event runs the gate again.
        gate_fields = {"metrics": run_metrics, "gate": gate.to_dict(), "model_key": model_key}
        if not gate.passed:
            return self._not_published(record, gate.reason, gate, gate_fields).count("GateRefused")

        # The alias, the run and the content's record move together (one transaction).
        published = self.registry.publish(
            city,
            run,
            metrics=run_metrics,
            model_key=model_key,
            reason=_clip(gate.reason),
            expected_status=[TRAINING],
            cutover_seconds=cutover_lead(self.settings.alias_cache_seconds),
            run_fields=gate_fields,
            record=record,
            city_record=current,
        )
        if not published:
            latest = self.registry.get_run(city, run)
            if latest.status != TRAINING:
                return self._stale(latest, f"the run is {latest.status}")
            newest = self.registry.get_city(city).newest_published
            return self._superseded(record, newest, gate, gate_fields)
        return Outcome(
            Action.PUBLISHED,
            f"{city} now serves version {run}: {gate.reason}",
            city=city,
            run=run,
            status=PUBLISHED,
            job_name=name,
            details={"model_key": model_key, "gate": gate.to_dict()},
        ).count("ModelPublished")

    def _copy_model(self, artifact: str, city: str, version: str) -> str:
        """Copy the training job's ``model.tar.gz`` to its own, never-overwritten key."""
        source_bucket, source_key = layout.parse_s3_uri(artifact)
        bucket = self.settings.bucket
        target = layout.mme_key(city, version)
        source_etag = self.s3.head_object(Bucket=source_bucket, Key=source_key)["ETag"]
        # Looked at first (one HEAD), not only after a refused copy: not every S3
        # enforces IfNoneMatch on a copy (moto does not), and a model is never overwritten.
        if self._holds_copy_of(target, artifact, source_etag):
            return target  # an earlier try of this event copied it
        try:
            self.s3.copy_object(
                Bucket=bucket,
                Key=target,
                CopySource={"Bucket": source_bucket, "Key": source_key},
                # Where it came from, so a retry can tell its own copy from a stranger's.
                Metadata={"source": artifact, "source-etag": source_etag.strip('"')},
                MetadataDirective="REPLACE",
                ContentType="application/x-gzip",
                # S3 refuses the copy if the key appeared since the check above.
                IfNoneMatch="*",
            )
        except ClientError as err:
            if _error_code(err) not in ("PreconditionFailed", "412"):
                raise
            if not self._holds_copy_of(target, artifact, source_etag):
                raise ModelOverwriteRefused(
                    f"s3://{bucket}/{target} appeared during the copy with another model"
                ) from err
        return target

    def _holds_copy_of(self, key: str, artifact: str, source_etag: str) -> bool:
        """Whether ``key`` exists and holds ``artifact``; raise if it holds anything else."""
        try:
            head = self.s3.head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as err:
            # HeadObject answers without a body: botocore sees only the status, "404".
            if _error_code(err) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        metadata = head.get("Metadata", {})
        same_source = metadata.get("source") == artifact
        same_bytes = head.get("ETag", "").strip('"') == source_etag.strip('"')
        if same_bytes or (same_source and metadata.get("source-etag") == source_etag.strip('"')):
            return True
        # The endpoint caches models by name: replacing this artifact could leave the
        # endpoint serving the old bytes under the same version. Stop, loudly.
        raise ModelOverwriteRefused(
            f"s3://{self.settings.bucket}/{key} already holds a different model "
            f"(from {metadata.get('source', 'elsewhere')}); models are never overwritten"
        )

    def _superseded(
        self,
        record: Run,
        newest: str,
        gate: GateResult | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> Outcome:
        return self._not_published(record, f"superseded by version {newest}", gate, fields).count(
            "ModelSuperseded"
        )

    def _not_published(
        self,
        record: Run,
        reason: str,
        gate: GateResult | None,
        fields: Mapping[str, Any] | None = None,
    ) -> Outcome:
        updated = self.registry.update_run(
            record.city,
            record.run,
            expected_status=[TRAINING],
            **(fields or {}),
            status=NOT_PUBLISHED,
            reason=_clip(reason),
        )
        if updated is None:
            return self._stale(self.registry.get_run(record.city, record.run), "run moved on")
        return Outcome.of_run(
            Action.NOT_PUBLISHED,
            reason,
            record,
            status=NOT_PUBLISHED,
            job_name=record.training_job,
            details={"gate": gate.to_dict()} if gate is not None else {},
        ).count("ModelNotPublished")

    # -- capacity retries ------------------------------------------------------------

    def resume(self, message: RetryMessage) -> Outcome:
        """Create a job again that hit ``ResourceLimitExceeded`` (capacity retry queue).

        A run that moved on meanwhile (its job started after all, or it failed) is
        left alone.
        """
        record = self.registry.get_run(message.city, message.run)
        if message.kind == "processing":
            if record.processing_job != message.job_name:
                return self._stale(record, f"{message.job_name} is not the run's processing job")
            return self.start_processing(message.city, message.run, retries=message.retries)
        if record.training_job != message.job_name:
            return self._stale(record, f"{message.job_name} is not the run's training job")
        return self.start_training(message.city, message.run, retries=message.retries)

    def _create_job(
        self,
        kind: str,
        record: Run,
        name: str,
        create: Callable[[], object],
        *,
        expected: str,
        retries: int,
    ) -> Outcome:
        metric = "ProcessingJobStarted" if kind == "processing" else "TrainingJobStarted"
        errors = self.sagemaker.exceptions
        try:
            create()
        except errors.ResourceInUse:
            self._clear_reason(record, expected)
            return Outcome.of_run(
                Action.ALREADY_STARTED,
                f"{kind} job {name} already exists",
                record,
                job_name=name,
            )
        except errors.ResourceLimitExceeded as err:
            return self._wait_for_capacity(kind, record, name, expected, retries, err)
        except ClientError as err:
            if _transient(err):
                # botocore retried already: wait on the queue as for capacity, so the
                # job still starts once SageMaker accepts calls again.
                return self._wait_for_capacity(kind, record, name, expected, retries, err)
            # Nothing will ever create this job (a bad request, a missing permission):
            # the run ends FAILED, with SageMaker's words, rather than wait forever.
            return self._job_not_created(kind, record, name, expected, err)
        self._clear_reason(record, expected)
        return Outcome.of_run(
            Action.STARTED,
            f"{kind} job {name} started",
            record,
            job_name=name,
        ).count(metric)

    def _clear_reason(self, record: Run, expected: str) -> None:
        if record.reason:  # e.g. "waiting for SageMaker capacity": no longer true
            self.registry.update_run(record.city, record.run, expected_status=[expected], reason="")

    def _job_not_created(
        self, kind: str, record: Run, name: str, expected: str, err: ClientError
    ) -> Outcome:
        reason = _clip(
            f"{kind} job {name} could not be created: {_error_code(err)}: {_error_message(err)}"
        )
        updated = self.registry.update_run(
            record.city, record.run, expected_status=[expected], status=FAILED, reason=reason
        )
        if updated is None:
            return self._stale(self.registry.get_run(record.city, record.run), "run moved on")
        return Outcome.of_run(Action.FAILED, reason, record, status=FAILED, job_name=name).count(
            "JobFailed"
        )

    def _wait_for_capacity(
        self, kind: str, record: Run, name: str, expected: str, retries: int, err: ClientError
    ) -> Outcome:
        if retries >= MAX_CAPACITY_RETRIES:
            reason = (
                f"{kind} job {name} could not start: no SageMaker capacity after "
                f"{retries} retries ({_error_message(err)})"
            )
            updated = self.registry.update_run(
                record.city,
                record.run,
                expected_status=[expected],
                status=FAILED,
                reason=_clip(reason),
            )
            if updated is None:
                return self._stale(record, "the run moved on meanwhile")
            return Outcome.of_run(
                Action.FAILED,
                reason,
                record,
                status=FAILED,
                job_name=name,
            ).count("JobFailed")  # a job that never started (the alarm adds the three)
        delay = capacity_delay(retries)
        message = RetryMessage(kind, record.city, record.run, name, retries + 1)
        self.sqs.send_message(
            QueueUrl=_required(self.settings.retry_queue_url, "CAPACITY_RETRY_QUEUE_URL"),
            MessageBody=message.to_json(),
            DelaySeconds=delay,
        )
        reason = f"{WAITING_FOR_CAPACITY} ({_error_message(err)}); next try in {delay} s"
        self.registry.update_run(
            record.city, record.run, expected_status=[expected], reason=_clip(reason)
        )
        return Outcome.of_run(
            Action.WAITING_FOR_CAPACITY,
            reason,
            record,
            job_name=name,
            details={"delay_seconds": delay, "retries": retries + 1},
        ).count("CapacityWait")

    # -- shared ----------------------------------------------------------------------

    def _job_run(self, name: str, status: str, kind: str) -> tuple[str, str] | Outcome:
        """Return ``(city, run)`` of one of this stack's jobs, or the outcome of ignoring
        the event."""
        if parse_job_name(name, self.settings.stack) is None:
            return Outcome(
                Action.IGNORED, f"{kind} job {name} is not a job of stack {self.settings.stack}"
            ).count("EventIgnored")
        if status not in TERMINAL_JOB_STATUSES:
            return Outcome(Action.IGNORED, f"{kind} job {name} is {status}", job_name=name)
        key = self.registry.job_run(name)
        if key is None:
            return Outcome(
                Action.IGNORED, f"{kind} job {name} is not in the registry", job_name=name
            ).count("EventIgnored")
        return key

    def _job_failed(
        self,
        kind: str,
        record: Run,
        name: str,
        status: str,
        described: Mapping[str, Any],
        expected: str,
    ) -> Outcome:
        verb = "failed" if status == JOB_FAILED else "was stopped"
        parts = [f"{kind} job {name} {verb}"]
        failure = str(described.get("FailureReason", "")).strip()
        exit_message = str(described.get("ExitMessage", "")).strip()
        if failure:
            parts.append(failure)
        if exit_message and exit_message not in failure:
            parts.append(exit_message)
        reason = _clip(": ".join(parts))
        updated = self.registry.update_run(
            record.city, record.run, expected_status=[expected], status=FAILED, reason=reason
        )
        if updated is None:
            return self._stale(self.registry.get_run(record.city, record.run), "run moved on")
        return Outcome.of_run(
            Action.FAILED,
            reason,
            record,
            status=FAILED,
            job_name=name,
        ).count(_failed_metric(kind))

    def _stale(self, record: Run, why: str) -> Outcome:
        return Outcome.of_run(
            Action.STALE,
            f"nothing to do for {record.city} run {record.run}: {why}",
            record,
        ).count("EventStale")

    def _tags(self, run: Run) -> list[dict[str, str]]:
        return [
            {"Key": "city", "Value": run.city},
            {"Key": "run", "Value": run.run},
            {"Key": "version", "Value": run.version},
            {"Key": "stack", "Value": self.settings.stack},
        ]

    def _put_json(self, key: str, document: Mapping[str, Any]) -> None:
        self.s3.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=json.dumps(document, indent=2).encode("utf-8"),
            ContentType="application/json",
        )

    def _processing_config(self) -> ProcessingJobConfig:
        if self.settings.processing is None:
            raise ConfigurationError(
                "processing job settings are missing (SKLEARN_IMAGE_URI, "
                "PROCESSING_INSTANCE_TYPE, PROCESSING_CODE_URI, SAGEMAKER_ROLE_ARN)"
            )
        return self.settings.processing

    def _training_config(self) -> TrainingJobConfig:
        if self.settings.training is None:
            raise ConfigurationError(
                "training job settings are missing (LINEAR_LEARNER_IMAGE_URI, "
                "TRAINING_INSTANCE_TYPE, HYPERPARAMETERS, SAGEMAKER_ROLE_ARN)"
            )
        return self.settings.training


def _failed_metric(kind: str) -> str:
    return "ProcessingJobFailed" if kind == "processing" else "TrainingJobFailed"


def _required(value: str, variable: str) -> str:
    if not value:
        raise ConfigurationError(f"{variable} is not configured for this function")
    return value


def _boto3_client(service: str) -> Any:
    # Imported on first use: a handler's import stays cheap (cold start), and tests
    # that inject every client never import boto3 through this module.
    import boto3

    return boto3.client(service)
