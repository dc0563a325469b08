"""The onboard, train, publish and retry handlers, invoked with the sample events.

Each test sets the function's environment (as ``template.yaml`` does), then imports the
handler fresh, as a new Lambda execution environment would, and invokes it with an
event from ``events/`` and a fake LambdaContext. The handlers' default clients are
moto's; where moto cannot answer (a failed job's FailureReason, the endpoint), the test
gives the handler a pipeline with the fakes of ``test_pipeline``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from citymodels.endpoint import EndpointClient
from citymodels.pipeline import HYPERPARAMETER_VARIABLES, Pipeline
from citymodels.registry import FAILED, PROCESSING, PUBLISHED, TRAINING, Run
from citymodels.settings import ConfigurationError
from citymodels.versions import mint_version
from tests.aws import BUCKET, ENDPOINT, STACK, Aws, FakeLambdaContext, load_event
from tests.unit.test_pipeline import (
    CITY,
    CODE_URI,
    HYPERPARAMETERS,
    LL_IMAGE,
    ROLE,
    SKLEARN_IMAGE,
    FakeRuntime,
    FakeSageMaker,
    RecordingSqs,
    World,
    body_of,
)

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"

# The sample events tell one story: an upload (s3_object_created) became run RUN, whose
# processing and training jobs are both named JOB.
UPLOAD = load_event("s3_object_created")
RUN = mint_version(UPLOAD["time"], UPLOAD["detail"]["object"]["sequencer"])
JOB = load_event("processing_completed")["detail"]["ProcessingJobName"]


@pytest.fixture
def function_env(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """The functions' environment, as the template sets it, pointing at the moto stack."""
    for name, value in {
        "STACK_NAME": STACK,
        "DATA_BUCKET": BUCKET,
        "REGISTRY_TABLE": aws.table,
        "RAW_PREFIX": "raw/",
        "SAGEMAKER_ROLE_ARN": ROLE,
        "SKLEARN_IMAGE_URI": SKLEARN_IMAGE,
        "PROCESSING_INSTANCE_TYPE": "ml.m5.large",
        "PROCESSING_CODE_URI": CODE_URI,
        "LINEAR_LEARNER_IMAGE_URI": LL_IMAGE,
        "TRAINING_INSTANCE_TYPE": "ml.m5.large",
        **{variable: HYPERPARAMETERS[name] for name, variable in HYPERPARAMETER_VARIABLES.items()},
        "CAPACITY_RETRY_QUEUE_URL": aws.retry_queue_url,
        "ENDPOINT_NAME": ENDPOINT,
        "GATE_TOLERANCE": "0.05",
        "ALIAS_CACHE_SECONDS": "5",
        "POWERTOOLS_SERVICE_NAME": "citymodels",
        "POWERTOOLS_METRICS_NAMESPACE": "citymodels",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def load_function(
    function_env: None, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], ModuleType]:
    """Import ``functions/{name}/app.py`` afresh, as a new execution environment would.

    Configuration is read at import, so this comes after the environment is set.
    """

    def load(name: str) -> ModuleType:
        # Powertools configures one log handler per service name for the life of the
        # process, bound to the stdout of the time: a fresh name per import makes the
        # handler write to this test's (captured) stdout.
        monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", f"citymodels-{name}-{uuid.uuid4().hex}")
        spec = importlib.util.spec_from_file_location(
            f"citymodels_function_{name}", FUNCTIONS / name / "app.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def faked(module: ModuleType, aws: Aws, tmp_path: Path, world: World | None = None) -> World:
    """Give a handler the test pipeline (SageMaker and endpoint fakes); return its world.

    Pass ``world`` to share its fakes (a story across two functions).
    """
    sagemaker = world.sagemaker if world else FakeSageMaker(aws.sagemaker)
    runtime = world.runtime if world else FakeRuntime(aws.s3)
    sqs = world.sqs if world else RecordingSqs(aws.sqs)
    pipeline = Pipeline(
        module.SETTINGS,
        s3=aws.s3,
        sagemaker=sagemaker.client,
        sqs=sqs,
        registry=aws.registry,
        endpoint=EndpointClient(ENDPOINT, client=runtime.client, sleep=lambda _: None),
    )
    setattr(module, "pipeline", pipeline)  # noqa: B010 - the handler's injection point
    shared = World(aws, pipeline, sagemaker, runtime, sqs, tmp_path)
    if world is not None:
        shared.bodies = world.bodies
    return shared


def given_run(aws: Aws, status: str = PROCESSING) -> Run:
    """The registry state the sample job events refer to: run RUN with job JOB."""
    run = Run(
        city=CITY,
        run=RUN,
        key=f"raw/{CITY}/houses.csv",
        status=status,
        sha256=hashlib.sha256(b"citymodels sample upload").hexdigest(),
        attempt=1,
        processing_job=JOB,
        training_job=JOB if status == TRAINING else "",
    )
    aws.registry.create_run(run)
    aws.registry.name_job(CITY, RUN, JOB, expected_status=[status])
    return run


def emitted(out: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Split a handler's stdout into its JSON log lines and its EMF metrics."""
    logs: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        document = json.loads(line)
        if "_aws" in document:
            for definition in document["_aws"]["CloudWatchMetrics"]:
                for metric in definition["Metrics"]:
                    values = document[metric["Name"]]  # EMF: a value or a list of values
                    metrics[metric["Name"]] = sum(values) if isinstance(values, list) else values
        else:
            logs.append(document)
    return logs, metrics


# -- onboard --------------------------------------------------------------------------


def test_onboard_starts_the_processing_job_of_an_upload(
    load_function: Callable[[str], ModuleType],
    aws: Aws,
    lambda_context: FakeLambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the onboard function with its default (moto) clients, and a valid upload to
    # a versioned bucket, as the template's
    onboard = load_function("onboard")
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    put = aws.s3.put_object(Bucket=BUCKET, Key=f"raw/{CITY}/houses.csv", Body=body_of(1))
    event = copy.deepcopy(UPLOAD)
    event["detail"]["object"]["version-id"] = put["VersionId"]
    # WHEN the sample Object Created event arrives (with that upload's version id)
    result = onboard.lambda_handler(event, lambda_context)
    # THEN the processing job exists and the run is PROCESSING, under the event's run id
    assert (result["action"], result["run"], result["city"]) == ("started", RUN, CITY)
    aws.sagemaker.describe_processing_job(ProcessingJobName=result["job_name"])
    assert aws.registry.get_run(CITY, RUN).status == PROCESSING
    # AND the metrics are emitted, and the log line carries the correlation ids
    logs, metrics = emitted(capsys.readouterr().out)
    assert metrics == {"UploadAccepted": 1.0, "ProcessingJobStarted": 1.0}
    [line] = [entry for entry in logs if entry.get("action") == "started"]
    assert (line["city"], line["run"], line["version"]) == (CITY, RUN, RUN)
    assert line["correlation_id"] == UPLOAD["id"]


def test_onboard_rejects_an_upload_whose_city_id_is_invalid(
    load_function: Callable[[str], ModuleType],
    aws: Aws,
    lambda_context: FakeLambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN an upload under raw/New York!/ (the event's key is URL-encoded)
    event = load_event("s3_object_created_bad_city")
    # WHEN its event arrives
    result = load_function("onboard").lambda_handler(event, lambda_context)
    # THEN the rejected-key report explains it, and the metric says so
    assert result["action"] == "rejected"
    digest = hashlib.sha256(b"raw/New York!/houses.csv").hexdigest()
    report = json.loads(
        aws.s3.get_object(Bucket=BUCKET, Key=f"reports/_rejected/{digest}.json")["Body"].read()
    )
    assert "contains ' ' at position 3" in report["message"]
    assert emitted(capsys.readouterr().out)[1] == {"UploadRejected": 1.0}


def test_a_function_without_its_configuration_fails_at_import(
    load_function: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROCESSING_CODE_URI")
    with pytest.raises(ConfigurationError, match="PROCESSING_CODE_URI"):
        load_function("onboard")


# -- train ----------------------------------------------------------------------------


def test_train_starts_training_when_processing_completed(
    load_function: Callable[[str], ModuleType], aws: Aws, lambda_context: FakeLambdaContext
) -> None:
    # GIVEN run RUN waiting for its processing job JOB
    given_run(aws)
    # WHEN the job's Completed event reaches the train function (default moto clients)
    result = load_function("train").lambda_handler(
        load_event("processing_completed"), lambda_context
    )
    # THEN the training job exists and the run is TRAINING
    assert (result["action"], result["job_name"]) == ("started", JOB)
    described = aws.sagemaker.describe_training_job(TrainingJobName=JOB)
    assert described["AlgorithmSpecification"]["TrainingImage"] == LL_IMAGE
    assert aws.registry.get_run(CITY, RUN).status == TRAINING


def test_train_records_a_failed_processing_job_with_its_reasons(
    load_function: Callable[[str], ModuleType],
    aws: Aws,
    lambda_context: FakeLambdaContext,
    tmp_path: Path,
) -> None:
    # GIVEN run RUN whose processing job failed, the container saying why
    given_run(aws)
    train = load_function("train")
    world = faked(train, aws, tmp_path)
    event = load_event("processing_failed")
    world.sagemaker.descriptions[JOB] = {
        "ProcessingJobStatus": "Failed",
        "FailureReason": event["detail"]["FailureReason"],
        "ExitMessage": "houses.csv: rejected: 12 rows; at least 50 are needed to train",
    }
    # WHEN the Failed event arrives
    result = train.lambda_handler(event, lambda_context)
    # THEN the run is FAILED with both reasons, and no training starts
    record = aws.registry.get_run(CITY, RUN)
    assert (result["action"], record.status) == ("failed", FAILED)
    assert "AlgorithmError: See job logs" in record.reason
    assert "at least 50 are needed" in record.reason
    assert world.sagemaker.training_requests == []


def test_job_events_of_another_stack_are_ignored(
    load_function: Callable[[str], ModuleType], aws: Aws, lambda_context: FakeLambdaContext
) -> None:
    # GIVEN a job of stack "cmtest-prod", whose name also starts with "cm-cmtest-"
    event = load_event("processing_completed")
    event["detail"]["ProcessingJobName"] = JOB.replace("cm-cmtest-", "cm-cmtest-prod-")
    given_run(aws)
    # WHEN its event reaches this stack's train function THEN nothing happens
    result = load_function("train").lambda_handler(event, lambda_context)
    assert result["action"] == "ignored"
    assert aws.registry.get_run(CITY, RUN).status == PROCESSING


# -- publish --------------------------------------------------------------------------


def test_the_sample_events_carry_an_upload_through_to_a_published_model(
    load_function: Callable[[str], ModuleType],
    aws: Aws,
    lambda_context: FakeLambdaContext,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN run RUN whose processing job wrote its splits (the real container code)
    given_run(aws)
    train, publish = load_function("train"), load_function("publish")
    world = faked(train, aws, tmp_path)
    faked(publish, aws, tmp_path, world)
    world.bodies[RUN] = body_of(1, n=120)
    world.write_processed(CITY, RUN)
    # WHEN the processing job's Completed event reaches the train function
    trained = train.lambda_handler(load_event("processing_completed"), lambda_context)
    assert trained["action"] == "started"
    # AND the training job's Completed event reaches the publish function
    world.write_model(CITY, RUN, bias=50)
    result = publish.lambda_handler(load_event("training_completed"), lambda_context)
    # THEN the model was gated through the endpoint and is served under its version
    assert result["action"] == "published", result["message"]
    assert aws.registry.get_city(CITY).current == RUN
    assert aws.registry.get_run(CITY, RUN).status == PUBLISHED
    assert world.runtime.calls == [f"{CITY}/{RUN}.tar.gz"]
    logs, metrics = emitted(capsys.readouterr().out)
    assert metrics == {"TrainingJobStarted": 1.0, "ModelPublished": 1.0}
    assert any(entry.get("action") == "published" and entry["city"] == CITY for entry in logs)


@pytest.mark.parametrize("name", ["training_failed", "training_stopped"])
def test_publish_records_a_failed_or_stopped_training_job(
    load_function: Callable[[str], ModuleType],
    aws: Aws,
    lambda_context: FakeLambdaContext,
    tmp_path: Path,
    name: str,
) -> None:
    # GIVEN run RUN in training, whose training job ended without a model
    given_run(aws, TRAINING)
    publish = load_function("publish")
    world = faked(publish, aws, tmp_path)
    event = load_event(name)
    world.sagemaker.descriptions[JOB] = {"FailureReason": event["detail"]["FailureReason"]}
    # WHEN its event arrives
    result = publish.lambda_handler(event, lambda_context)
    # THEN the run is FAILED with SageMaker's reason, and nothing is served
    record = aws.registry.get_run(CITY, RUN)
    assert (result["action"], record.status) == ("failed", FAILED)
    assert event["detail"]["FailureReason"] in record.reason
    assert aws.registry.get_city(CITY).current == ""


# -- retry ----------------------------------------------------------------------------


def test_retry_starts_a_job_postponed_for_capacity(
    load_function: Callable[[str], ModuleType],
    aws: Aws,
    lambda_context: FakeLambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN run RUN waiting for capacity to start its processing job
    given_run(aws)
    # WHEN the delayed message reaches the retry function (default moto clients)
    result = load_function("retry").lambda_handler(load_event("capacity_retry_sqs"), lambda_context)
    # THEN the job starts
    [outcome] = result["outcomes"]
    assert (outcome["action"], outcome["job_name"]) == ("started", JOB)
    aws.sagemaker.describe_processing_job(ProcessingJobName=JOB)
    assert emitted(capsys.readouterr().out)[1] == {"ProcessingJobStarted": 1.0}


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_retry_raises_on_a_message_it_does_not_understand(
    load_function: Callable[[str], ModuleType],
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN a message that is not a retry message
    event = load_event("capacity_retry_sqs")
    event["Records"][0]["body"] = "garbage"
    # WHEN it arrives THEN the function fails (the message goes back, then to the DLQ)
    with pytest.raises(ValueError, match="not a capacity retry message"):
        load_function("retry").lambda_handler(event, lambda_context)


# -- reconcile ------------------------------------------------------------------------


def test_reconcile_moves_a_stuck_run_on_and_reports_each_decision(
    load_function: Callable[[str], ModuleType],
    aws: Aws,
    lambda_context: FakeLambdaContext,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN run RUN in TRAINING whose training job was never created (the train
    # function gave up on it), a bound of 0 s, and garbage in the FailureQueue
    for name, value in {
        "STUCK_RUN_SECONDS": "0",
        "FAIL_STUCK_RUN_SECONDS": "129600",
        "FAILURE_QUEUE_URL": aws.failure_queue_url,
    }.items():
        monkeypatch.setenv(name, value)
    given_run(aws, TRAINING)
    aws.sqs.send_message(QueueUrl=aws.failure_queue_url, MessageBody="garbage")
    # the template's timeout: a sweep starts nothing with under 300 s left
    monkeypatch.setattr(lambda_context, "get_remaining_time_in_millis", lambda: 900_000)
    # WHEN the schedule fires (default moto clients)
    result = load_function("reconcile").lambda_handler(
        load_event("reconcile_schedule"), lambda_context
    )
    # THEN the training job is created and the garbage is left for a person
    started, skipped = result["outcomes"]
    assert (started["action"], started["job_name"], started["run"]) == ("started", JOB, RUN)
    aws.sagemaker.describe_training_job(TrainingJobName=JOB)
    assert skipped["action"] == "ignored"
    # AND each decision is a log line and metrics (the stuck-runs alarm's among them)
    logs, metrics = emitted(capsys.readouterr().out)
    assert metrics == {
        "ReconcileSweeps": 1.0,
        "StuckRuns": 1.0,
        "RunsReconciled": 1.0,
        "TrainingJobStarted": 1.0,
        "ReplaySkipped": 1.0,
    }
    assert {entry.get("action") for entry in logs} >= {"started", "ignored"}
