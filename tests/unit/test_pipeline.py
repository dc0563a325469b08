"""The event-driven pipeline (docs/application.md, "What happens on each event"), on moto.

SageMaker is a real client under botocore's Stubber, answered by moto's SageMaker
(both check every request against the API model) plus what moto does not do:
ResourceInUse for a duplicate job name, ResourceLimitExceeded on demand, and the
Describe* answers of failed jobs and finished training jobs. The processing job's work
is done by the real container code (``preprocessing/preprocess.py`` through the
devkit); the endpoint is a real ``sagemaker-runtime`` client under botocore's Stubber
that loads ``mme/{TargetModel}`` from moto S3 and answers as the inference pipeline
does: with the local Linear Learner for real artifacts, or with a known error
(``{"bias": b}`` artifacts: the true price + b, so the MAE is |b|).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from citymodels import layout
from citymodels.endpoint import EndpointClient
from citymodels.jobs import job_name
from citymodels.pipeline import (
    MAX_CAPACITY_RETRIES,
    Action,
    ModelOverwriteRefused,
    Outcome,
    Pipeline,
    PipelineSettings,
    ProcessingJobConfig,
    RetryMessage,
    TrainingJobConfig,
    UploadEvent,
    capacity_delay,
)
from citymodels.registry import (
    DUPLICATE,
    FAILED,
    NOT_PUBLISHED,
    PROCESSING,
    PUBLISHED,
    REJECTED,
    TRAINING,
    Run,
)
from citymodels_devkit import inprocess
from citymodels_devkit.linear_learner import load_model
from tests.aws import BUCKET, ENDPOINT, STACK, Aws, AwsError, StubbedClient, StubbedRuntime
from tests.conftest import raw_rows, upload
from tests.unit.test_validation import CORPUS

CITY = "NewYork_NY"
ROLE = "arn:aws:iam::123456789012:role/cmtest-SageMakerExecutionRole"
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
LL_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1"
CODE_URI = f"s3://{BUCKET}/artifacts/processing/"
HYPERPARAMETERS = {
    **inprocess.NOTEBOOK_HYPERPARAMETERS,
    "epochs": "5",  # small and quick: these tests check the flow, not the accuracy
    "num_models": "4",
}


# -- fakes ----------------------------------------------------------------------------


class FakeSageMaker(StubbedClient):
    """A SageMaker client answered by moto's SageMaker, plus what moto does not do.

    A real client under botocore's Stubber (:class:`tests.aws.StubbedClient`): every call
    goes to moto (``real``), except that a duplicate job name answers ResourceInUse,
    ResourceLimitExceeded is answered on demand, and a Describe* answer gets the fields
    a test gives it. Errors arrive as botocore raises them: the modelled exceptions.
    """

    def __init__(self, real: Any) -> None:
        super().__init__("sagemaker", self._answer)
        self.real = real
        self._accepted: list[tuple[str, dict[str, Any]]] = []
        self.capacity_errors = 0
        """The next N creates answer ResourceLimitExceeded."""
        self.create_errors: list[AwsError] = []
        """Answers of the next creates, in order (throttling, validation...; then: as usual)."""
        self.describe_errors: dict[str, AwsError] = {}
        """Job name → the error every Describe* of it answers."""
        self.descriptions: dict[str, dict[str, Any]] = {}
        """Job name → fields added to moto's Describe* answer."""

    @property
    def processing_requests(self) -> list[dict[str, Any]]:
        """The CreateProcessingJob requests that created a job."""
        return self._created("create_processing_job")

    @property
    def training_requests(self) -> list[dict[str, Any]]:
        """The CreateTrainingJob requests that created a job."""
        return self._created("create_training_job")

    def _created(self, operation: str) -> list[dict[str, Any]]:
        return [request for op, request in self._accepted if op == operation]

    def _answer(self, operation: str, request: dict[str, Any]) -> dict[str, Any] | AwsError:
        kind = "Processing" if "processing" in operation else "Training"
        name = request.get(f"{kind}JobName")
        if operation.startswith("describe_") and name in self.describe_errors:
            return self.describe_errors[str(name)]
        if operation.startswith("create_"):
            if self.create_errors:
                return self.create_errors.pop(0)
            if self.capacity_errors:
                self.capacity_errors -= 1
                return AwsError(
                    "ResourceLimitExceeded",
                    400,
                    f"The account-level service limit 'ml.m5.large for {kind.lower()} job usage' "
                    "is 2 Instances, with current utilization of 2 Instances",
                )
            if any(r[f"{kind}JobName"] == name for r in self._created(operation)):
                return AwsError("ResourceInUse", 400, f"{kind} job {name} already exists")
        try:
            answer: dict[str, Any] = getattr(self.real, operation)(**request)
        except ClientError as err:
            if not (operation.startswith("describe_") and name in self.descriptions):
                error, metadata = err.response["Error"], err.response["ResponseMetadata"]
                return AwsError(error["Code"], metadata["HTTPStatusCode"], error["Message"])
            answer = {}  # a job the test describes itself
        if operation.startswith("create_"):
            self._accepted.append((operation, request))
        elif operation.startswith("describe_"):
            # moto leaves out members the API model requires (ProcessingResources).
            required = self._required_members(kind, str(name))
            answer = {**required, **answer, **self.descriptions.get(str(name), {})}
        return answer

    @staticmethod
    def _required_members(kind: str, name: str) -> dict[str, Any]:
        """The members the API model requires of a Describe{kind}Job answer."""
        arn = f"arn:aws:sagemaker:us-east-1:123456789012:{kind.lower()}-job/{name}"
        now = datetime.now(UTC)
        if kind == "Processing":
            return {
                "ProcessingJobName": name,
                "ProcessingJobArn": arn,
                "ProcessingJobStatus": "Failed",
                "ProcessingResources": {
                    "ClusterConfig": {
                        "InstanceCount": 1,
                        "InstanceType": "ml.m5.large",
                        "VolumeSizeInGB": 30,
                    }
                },
                "AppSpecification": {"ImageUri": SKLEARN_IMAGE},
                "CreationTime": now,
            }
        return {
            "TrainingJobName": name,
            "TrainingJobArn": arn,
            "TrainingJobStatus": "Failed",
            "SecondaryStatus": "Failed",
            "ModelArtifacts": {"S3ModelArtifacts": ""},
            "StoppingCondition": {},
            "CreationTime": now,
        }


class RecordingSqs:
    """moto's SQS, remembering every ``send_message`` (moto hides delayed messages)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sent: list[dict[str, Any]] = []

    def send_message(self, **request: Any) -> Any:
        self.sent.append(request)
        return self.real.send_message(**request)


def true_price(row: str) -> float:
    """The price formula of ``tests.conftest.raw_rows`` for a raw row without PRICE."""
    year, sqft, *_, deck = row.split(",")
    return (
        150 * float(sqft) - 5000 * (2019 - float(year)) + 250_000 + (10_000 if deck == "y" else 0)
    )


class FakeRuntime(StubbedRuntime):
    """A ``sagemaker-runtime`` client serving ``mme/{TargetModel}`` from moto S3.

    A real client under botocore's Stubber (:class:`tests.aws.StubbedRuntime`), answering
    each call from the artifact the request names.
    """

    def __init__(self, s3: Any) -> None:
        super().__init__(self._predict)
        self.s3 = s3
        self._pipelines: dict[bytes, inprocess.InferencePipeline] = {}

    @property
    def calls(self) -> list[str]:
        """The TargetModel of each InvokeEndpoint, in order."""
        return [request["TargetModel"] for request in self.requests]

    def _predict(self, request: dict[str, Any]) -> bytes | AwsError:
        target_model, body = request["TargetModel"], request["Body"]
        assert request["EndpointName"] == ENDPOINT and request["ContentType"] == "text/csv"
        try:
            artifact = self.s3.get_object(Bucket=BUCKET, Key=f"mme/{target_model}")["Body"].read()
        except ClientError:
            return AwsError(
                "ValidationError",
                400,
                f"Failed to download model data for target model {target_model}: not found",
            )
        if artifact[:2] == b"\x1f\x8b":  # a real model.tar.gz: the local inference pipeline
            if artifact not in self._pipelines:
                self._pipelines[artifact] = inprocess.InferencePipeline(load_model(artifact))
            prices = self._pipelines[artifact].predict_body(body, "text/csv")
        else:
            model = json.loads(artifact)
            if model.get("fail"):
                return AwsError(
                    "ModelError",
                    424,
                    "Received server error (500) from model with message 'predict failed'",
                )
            prices = [true_price(row) + model["bias"] for row in body.decode().splitlines()]
        return json.dumps({"predictions": [{"score": p} for p in prices]}).encode()


# -- the world: a pipeline on moto, and the steps SageMaker would take ----------------


def settings(aws: Aws, *, tolerance: float = 0.05) -> PipelineSettings:
    return PipelineSettings(
        stack=STACK,
        bucket=BUCKET,
        registry_table=aws.table,
        processing=ProcessingJobConfig(
            role_arn=ROLE, image_uri=SKLEARN_IMAGE, instance_type="ml.m5.large", code_uri=CODE_URI
        ),
        training=TrainingJobConfig(
            role_arn=ROLE,
            image_uri=LL_IMAGE,
            instance_type="ml.m5.large",
            hyperparameters=HYPERPARAMETERS,
        ),
        retry_queue_url=aws.retry_queue_url,
        endpoint_name=ENDPOINT,
        gate_tolerance=tolerance,
    )


@dataclass
class World:
    aws: Aws
    pipeline: Pipeline
    sagemaker: FakeSageMaker
    runtime: FakeRuntime
    sqs: RecordingSqs
    tmp: Path
    bodies: dict[str, bytes] = field(default_factory=dict)

    @property
    def registry(self) -> Any:
        return self.aws.registry

    def upload(
        self,
        body: bytes,
        *,
        minute: int = 0,
        city: str = CITY,
        name: str = "houses.csv",
        size: int | None = None,
        put: bool = True,
    ) -> Outcome:
        """A user drops ``body`` at ``raw/{city}/{name}``: the upload event's outcome."""
        key = f"raw/{city}/{name}"
        if put:
            self.aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        outcome = self.pipeline.onboard(
            upload_event(key, minute, len(body) if size is None else size)
        )
        if outcome.run:
            self.bodies[outcome.run] = body
        return outcome

    def write_processed(self, city: str, run: str) -> None:
        """The processing job's work: the real container code on the run's upload."""
        work = self.tmp / city / run
        work.mkdir(parents=True)
        (work / "upload.csv").write_bytes(self.bodies[run])
        inprocess.process_upload(work / "upload.csv", work / "processed", run)
        for split in layout.SPLITS:
            self.aws.s3.upload_file(
                str(work / "processed" / split / f"{split}.csv"),
                BUCKET,
                layout.processed_key(city, run, split),
            )

    def finish_processing(self, city: str, run: str) -> Outcome:
        """The processing job runs and reports Completed."""
        self.write_processed(city, run)
        record = self.registry.get_run(city, run)
        return self.pipeline.on_processing_state(record.processing_job, "Completed")

    def write_model(self, city: str, run: str, *, bias: float | None = 100.0) -> None:
        """The training job's work: its model.tar.gz and its final metrics.

        ``bias=None`` trains a real local Linear Learner on the processed splits;
        otherwise the model predicts the true price + ``bias`` (its MAE is ``|bias|``).
        """
        name = self.registry.get_run(city, run).training_job
        if bias is None:
            work = self.tmp / city / run
            path, metrics = inprocess.train_processed(
                work / "processed", work / "model", HYPERPARAMETERS
            )
            artifact = path.read_bytes()
        else:
            artifact = json.dumps({"bias": bias}).encode()
            metrics = {"test:absolute_loss": abs(bias), "validation:absolute_loss": abs(bias)}
        uri = self.sagemaker.real.describe_training_job(TrainingJobName=name)["ModelArtifacts"]
        bucket, key = layout.parse_s3_uri(uri["S3ModelArtifacts"])
        self.aws.s3.put_object(Bucket=bucket, Key=key, Body=artifact)
        now = datetime.now(UTC)
        self.sagemaker.descriptions[name] = {
            "FinalMetricDataList": [
                {"MetricName": k, "Value": v, "Timestamp": now} for k, v in metrics.items()
            ]
        }

    def finish_training(self, city: str, run: str, *, bias: float | None = 100.0) -> Outcome:
        """The training job writes its model and reports Completed (see :meth:`write_model`)."""
        self.write_model(city, run, bias=bias)
        name = self.registry.get_run(city, run).training_job
        return self.pipeline.on_training_state(name, "Completed")

    def run_to_end(
        self, body: bytes, *, minute: int, bias: float | None = 100.0, city: str = CITY
    ) -> Outcome:
        """Upload, process and train: the publish step's outcome."""
        started = self.upload(body, minute=minute, city=city)
        assert started.action is Action.STARTED, started
        self.finish_processing(city, started.run)
        return self.finish_training(city, started.run, bias=bias)


def upload_event(key: str, minute: int, size: int | None) -> UploadEvent:
    """The upload's event; a later ``minute`` is a later upload (a newer version)."""
    return UploadEvent(
        bucket=BUCKET,
        key=key,
        time=f"2026-11-25T01:{minute:02d}:00Z",
        sequencer=f"0062E99A88DC4{minute:05X}",
        size=size,
    )


@pytest.fixture
def world(aws: Aws, tmp_path: Path) -> World:
    return make_world(aws, tmp_path)


def make_world(aws: Aws, tmp_path: Path) -> World:
    """The pipeline on moto with its fakes (the ``world`` fixture, for other modules)."""
    sagemaker = FakeSageMaker(aws.sagemaker)
    runtime = FakeRuntime(aws.s3)
    sqs = RecordingSqs(aws.sqs)
    pipeline = Pipeline(
        settings(aws),
        s3=aws.s3,
        sagemaker=sagemaker.client,
        sqs=sqs,
        registry=aws.registry,
        endpoint=EndpointClient(ENDPOINT, client=runtime.client, sleep=lambda _: None),
    )
    return World(aws, pipeline, sagemaker, runtime, sqs, tmp_path)


def body_of(seed: int, n: int = 60) -> bytes:
    """A valid upload; each seed is different content."""
    return upload(raw_rows(n, seed=seed))


def read_json(aws: Aws, key: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return document


def exists(aws: Aws, key: str) -> bool:
    count: int = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0)
    return count > 0


# -- upload ---------------------------------------------------------------------------


def test_an_upload_starts_its_processing_job_as_the_contract_says(world: World) -> None:
    # GIVEN a valid upload
    body = body_of(1)
    # WHEN its event arrives
    outcome = world.upload(body, minute=7)
    # THEN its run id is minted from the event's time and sequencer (upload order)
    assert outcome.run == "20261125T010700000Z-0062E99A88DC40000700000000000000"
    # AND one processing job starts, named for the stack, city, content and attempt 1
    sha = hashlib.sha256(body).hexdigest()
    assert outcome.action is Action.STARTED
    assert outcome.job_name == job_name(STACK, CITY, sha, 1)
    assert outcome.metrics == {"UploadAccepted": 1, "ProcessingJobStarted": 1}
    [request] = world.sagemaker.processing_requests
    run = outcome.run
    assert request["ProcessingJobName"] == outcome.job_name
    assert request["RoleArn"] == ROLE
    assert request["AppSpecification"] == {
        "ImageUri": SKLEARN_IMAGE,
        "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/preprocess.py"],
    }
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    # the run's own copy of the validated upload, not the raw key a user may overwrite
    assert inputs["raw"]["S3Uri"] == f"s3://{BUCKET}/inputs/{CITY}/{run}/houses.csv"
    copy = world.aws.s3.get_object(Bucket=BUCKET, Key=f"inputs/{CITY}/{run}/houses.csv")
    assert copy["Body"].read() == body
    assert inputs["raw"]["LocalPath"] == "/opt/ml/processing/input/raw"
    assert (inputs["raw"]["S3DataType"], inputs["raw"]["S3InputMode"]) == ("S3Prefix", "File")
    assert inputs["code"]["S3Uri"] == CODE_URI
    assert inputs["code"]["LocalPath"] == "/opt/ml/processing/input/code"
    outputs = {o["OutputName"]: o["S3Output"] for o in request["ProcessingOutputConfig"]["Outputs"]}
    assert {name: o["S3Uri"] for name, o in outputs.items()} == {
        split: f"s3://{BUCKET}/processed/{CITY}/{run}/{split}/"
        for split in ("train", "validation", "test", "test-raw")
    }
    assert outputs["test-raw"]["LocalPath"] == "/opt/ml/processing/output/test-raw"
    assert request["Environment"] == {"CITYMODELS_CITY": CITY, "CITYMODELS_RUN": run}
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "city": CITY,
        "run": run,
        "version": run,
        "stack": STACK,
    }
    assert request["ProcessingResources"]["ClusterConfig"] == {
        "InstanceCount": 1,
        "InstanceType": "ml.m5.large",
        "VolumeSizeInGB": 30,
    }
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] > 0
    # AND the run is PROCESSING with its content hash, job and a validation report
    record = world.registry.get_run(CITY, run)
    assert (record.status, record.sha256, record.attempt) == (PROCESSING, sha, 1)
    assert record.processing_job == outcome.job_name
    assert record.input_key == f"inputs/{CITY}/{run}/houses.csv"
    assert read_json(world.aws, layout.report_key(CITY, run, "validation"))["ok"] is True


def test_the_job_trains_on_the_version_validated_whatever_comes_to_the_key_later(
    world: World,
) -> None:
    # GIVEN a versioned bucket (as the template's) where a first upload was overwritten
    # by a second one before the first's event was handled
    world.aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    key = f"raw/{CITY}/houses.csv"
    first, second = body_of(1), body_of(2)
    version = world.aws.s3.put_object(Bucket=BUCKET, Key=key, Body=first)["VersionId"]
    world.aws.s3.put_object(Bucket=BUCKET, Key=key, Body=second)
    # WHEN the first upload's event arrives
    event = replace(upload_event(key, 1, len(first)), version_id=version)
    outcome = world.pipeline.onboard(event)
    # THEN the first upload's bytes are validated, copied and given to the job
    assert outcome.action is Action.STARTED
    record = world.registry.get_run(CITY, outcome.run)
    assert record.sha256 == hashlib.sha256(first).hexdigest()
    copy = world.aws.s3.get_object(Bucket=BUCKET, Key=record.input_key)["Body"].read()
    assert copy == first
    [request] = world.sagemaker.processing_requests
    assert request["ProcessingInputs"][0]["S3Input"]["S3Uri"].endswith(record.input_key)


def test_the_jobs_input_prefix_holds_the_upload_alone(world: World) -> None:
    # GIVEN an upload whose key is also the start of another object's key
    world.aws.s3.put_object(Bucket=BUCKET, Key=f"raw/{CITY}/houses.csv.bak/x.csv", Body=b"x")
    outcome = world.upload(body_of(1))
    # THEN the prefix the job downloads holds one object: the validated copy
    [request] = world.sagemaker.processing_requests
    uri = request["ProcessingInputs"][0]["S3Input"]["S3Uri"]
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    listed = world.aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert [o["Key"] for o in listed] == [f"inputs/{CITY}/{outcome.run}/houses.csv"]


def test_an_event_delivered_twice_starts_one_job(world: World) -> None:
    # GIVEN an upload whose event was handled
    body = body_of(1)
    first = world.upload(body)
    # WHEN the same event is delivered again
    again = world.upload(body, put=False)
    # THEN the job is created again with the same name, SageMaker says it exists: one job
    assert again.action is Action.ALREADY_STARTED
    assert (again.run, again.job_name) == (first.run, first.job_name)
    assert len(world.sagemaker.processing_requests) == 1
    assert [r.run for r in world.registry.list_runs(CITY)] == [first.run]


def test_a_redelivery_after_a_crash_before_the_job_was_named_starts_it(world: World) -> None:
    # GIVEN a first delivery that recorded the run and then died (no job named yet)
    body = body_of(1)
    world.aws.s3.put_object(Bucket=BUCKET, Key=f"raw/{CITY}/houses.csv", Body=body)
    event = upload_event(f"raw/{CITY}/houses.csv", 0, len(body))
    from citymodels.versions import mint_version

    run = mint_version(event.time, event.sequencer)
    world.registry.create_run(
        Run(city=CITY, run=run, key=event.key, status=PROCESSING, size=len(body))
    )
    # WHEN the event is delivered again
    outcome = world.pipeline.onboard(event)
    # THEN the upload is validated and its job starts after all
    assert outcome.action is Action.STARTED and outcome.run == run
    assert len(world.sagemaker.processing_requests) == 1


def test_every_bad_upload_of_the_corpus_is_rejected_with_a_report_and_no_job(
    world: World, subtests: pytest.Subtests
) -> None:
    for minute, (name, data, code, _line, words) in enumerate(CORPUS):
        with subtests.test(name):
            # GIVEN a malformed upload from the validation corpus WHEN its event arrives
            outcome = world.upload(data, minute=minute, name=f"upload-{minute}.csv")
            # THEN the run is REJECTED with the reason, the report names it, no job starts
            assert outcome.action is Action.REJECTED
            assert outcome.metrics == {"UploadRejected": 1}
            record = world.registry.get_run(CITY, outcome.run)
            assert record.status == REJECTED
            assert record.reason.startswith("rejected: ")
            report_key = layout.report_key(CITY, outcome.run, "validation")
            report = read_json(world.aws, report_key)
            assert report["ok"] is False
            assert code in report["problem_counts"]
            assert words in json.dumps(report, ensure_ascii=False)
            assert record.report_key == report_key
    assert world.sagemaker.processing_requests == []


def test_an_upload_that_cannot_be_read_is_rejected_with_the_reason(
    world: World, subtests: pytest.Subtests
) -> None:
    with subtests.test("over the size limit"):
        # GIVEN an event announcing 200 MB WHEN it arrives
        outcome = world.upload(b"", minute=1, size=200 * 1024 * 1024, put=False)
        # THEN it is rejected on the event's size alone (the object is never fetched)
        assert outcome.action is Action.REJECTED
        assert "209,715,200 bytes" in outcome.message
    with subtests.test("deleted before it was read"):
        outcome = world.upload(b"", minute=2, size=100, put=False)
        assert outcome.action is Action.REJECTED
        reason = world.registry.get_run(CITY, outcome.run).reason
        assert "deleted before it could be read" in reason
    assert world.sagemaker.processing_requests == []


BAD_KEYS = [
    ("raw/New York!/houses.csv", "contains ' ' at position 3"),
    ("raw/9Lives/houses.csv", "must start with a letter"),
    ("raw/NewYork_NY/houses.txt", "is not a .csv file"),
    ("raw/houses.csv", "a file inside a city folder"),
]


def test_an_upload_whose_key_has_no_valid_city_gets_a_rejected_report(
    world: World, subtests: pytest.Subtests
) -> None:
    for key, words in BAD_KEYS:
        with subtests.test(key):
            # GIVEN an upload under a key that names no valid city (or is not a .csv)
            world.aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body_of(1))
            # WHEN its event arrives
            outcome = world.pipeline.onboard(upload_event(key, 0, 100))
            # THEN a report is written under reports/_rejected/{sha256(key)}.json
            assert outcome.action is Action.REJECTED and words in outcome.message
            digest = hashlib.sha256(key.encode()).hexdigest()
            report = read_json(world.aws, f"reports/_rejected/{digest}.json")
            assert (report["ok"], report["key"]) == (False, key)
            assert words in report["message"]
    # AND nothing else: no city in the registry, no job
    assert world.registry.list_cities() == []
    assert world.sagemaker.processing_requests == []


# -- duplicates and attempts ----------------------------------------------------------


def test_content_already_published_is_a_duplicate_and_starts_nothing(world: World) -> None:
    # GIVEN content that was published as version 1
    body = body_of(1)
    published = world.run_to_end(body, minute=1)
    assert published.action is Action.PUBLISHED
    # WHEN the same bytes are uploaded again
    outcome = world.upload(body, minute=2, name="again.csv")
    # THEN the new run is a DUPLICATE of that version, and no job starts
    assert outcome.action is Action.DUPLICATE
    record = world.registry.get_run(CITY, outcome.run)
    assert (record.status, record.duplicate_of) == (DUPLICATE, published.run)
    assert published.run in record.reason
    # and, as that version is the one serving, the reason does not send anyone to roll back
    assert "which is serving: nothing to do" in record.reason
    assert "roll back" not in record.reason
    assert len(world.sagemaker.processing_requests) == 1


def test_content_still_in_progress_is_a_duplicate_of_that_run(world: World) -> None:
    body = body_of(1)
    first = world.upload(body, minute=1)
    outcome = world.upload(body, minute=2, name="copy.csv")
    assert outcome.action is Action.DUPLICATE
    assert world.registry.get_run(CITY, outcome.run).duplicate_of == first.run
    assert len(world.sagemaker.processing_requests) == 1


def test_content_still_training_is_a_duplicate_of_that_run(world: World) -> None:
    # GIVEN content whose run is training
    body = body_of(1)
    first = world.upload(body, minute=1)
    world.finish_processing(CITY, first.run)
    assert world.registry.get_run(CITY, first.run).status == TRAINING
    # WHEN the same bytes are uploaded again
    outcome = world.upload(body, minute=2, name="copy.csv")
    # THEN it is a duplicate of the training run: no second processing job
    assert outcome.action is Action.DUPLICATE
    record = world.registry.get_run(CITY, outcome.run)
    assert record.duplicate_of == first.run and "still TRAINING" in record.reason
    assert len(world.sagemaker.processing_requests) == 1


def test_a_redelivery_after_a_crash_between_counting_and_naming_starts_the_same_attempt(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a first delivery that counted the content's attempt, then died before it
    # named the run's job
    body = body_of(1)

    def crash_when_naming(*args: Any, **fields: Any) -> Any:
        raise RuntimeError("the function was killed here")

    with monkeypatch.context() as patched:
        patched.setattr(world.registry, "name_job", crash_when_naming)
        with pytest.raises(RuntimeError):
            world.upload(body)
    # WHEN the same event is delivered again
    outcome = world.upload(body, put=False)
    # THEN its run is not a duplicate of itself: the job of attempt 1 starts
    sha = hashlib.sha256(body).hexdigest()
    assert outcome.action is Action.STARTED
    assert outcome.job_name == job_name(STACK, CITY, sha, 1)
    assert world.registry.get_run(CITY, outcome.run).status == PROCESSING
    assert len(world.sagemaker.processing_requests) == 1


def test_content_whose_run_failed_gets_a_new_attempt(world: World) -> None:
    # GIVEN content whose processing job failed
    body = body_of(1)
    first = world.upload(body, minute=1)
    world.pipeline.on_processing_state(first.job_name, "Failed")
    # WHEN the same bytes are uploaded again
    second = world.upload(body, minute=2)
    # THEN a new job starts: attempt 2 of that content
    sha = hashlib.sha256(body).hexdigest()
    assert second.action is Action.STARTED
    assert second.job_name == job_name(STACK, CITY, sha, 2)
    assert world.registry.get_run(CITY, second.run).attempt == 2
    assert len(world.sagemaker.processing_requests) == 2


# -- processing job -------------------------------------------------------------------


def test_a_completed_processing_job_starts_training_as_the_contract_says(world: World) -> None:
    # GIVEN a run whose processing job completed
    started = world.upload(body_of(1))
    # WHEN its Completed event arrives
    outcome = world.finish_processing(CITY, started.run)
    # THEN the training job starts, on the run's processed splits, and the run is TRAINING
    assert outcome.action is Action.STARTED
    assert outcome.metrics == {"TrainingJobStarted": 1}
    [request] = world.sagemaker.training_requests
    run = started.run
    assert request["TrainingJobName"] == started.job_name
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": LL_IMAGE,
        "TrainingInputMode": "File",
    }
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"train", "validation", "test"}
    for name, channel in channels.items():
        source = channel["DataSource"]["S3DataSource"]
        assert source["S3Uri"] == f"s3://{BUCKET}/processed/{CITY}/{run}/{name}/"
        assert source["S3DataType"] == "S3Prefix"
        assert channel["ContentType"] == "text/csv;label_size=1"
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/training/{CITY}/{run}/"}
    assert request["HyperParameters"] == HYPERPARAMETERS
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.large"
    assert {t["Key"]: t["Value"] for t in request["Tags"]}["city"] == CITY
    record = world.registry.get_run(CITY, run)
    assert (record.status, record.training_job) == (TRAINING, started.job_name)


def test_a_completed_event_delivered_twice_starts_one_training_job(world: World) -> None:
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    again = world.pipeline.on_processing_state(started.job_name, "Completed")
    assert again.action is Action.ALREADY_STARTED
    assert len(world.sagemaker.training_requests) == 1
    assert world.registry.get_run(CITY, started.run).status == TRAINING


def test_a_failed_processing_job_records_its_reason_and_exit_message(world: World) -> None:
    # GIVEN a processing job that failed, with the container's message
    started = world.upload(body_of(1))
    world.sagemaker.descriptions[started.job_name] = {
        "ProcessingJobStatus": "Failed",
        "FailureReason": "AlgorithmError: See job logs for more information",
        "ExitMessage": "upload.csv: rejected: line 3: SQUARE_FEET is not a number: 'big'",
    }
    # WHEN its Failed event arrives
    outcome = world.pipeline.on_processing_state(started.job_name, "Failed")
    # THEN the run is FAILED with both, and no training starts
    record = world.registry.get_run(CITY, started.run)
    assert (outcome.action, record.status) == (Action.FAILED, FAILED)
    assert "AlgorithmError: See job logs" in record.reason
    assert "SQUARE_FEET is not a number" in record.reason
    assert outcome.metrics == {"ProcessingJobFailed": 1}
    assert world.sagemaker.training_requests == []


def test_a_stale_completed_event_does_not_move_a_failed_run(world: World) -> None:
    started = world.upload(body_of(1))
    world.pipeline.on_processing_state(started.job_name, "Stopped")
    outcome = world.pipeline.on_processing_state(started.job_name, "Completed")
    assert outcome.action is Action.STALE
    assert world.registry.get_run(CITY, started.run).status == FAILED
    assert world.sagemaker.training_requests == []


def test_events_that_are_not_this_stacks_or_not_final_are_ignored(
    world: World, subtests: pytest.Subtests
) -> None:
    started = world.upload(body_of(1))
    with subtests.test("other stacks' jobs"):
        for name in [
            "cm-cmtest-prod-9f54702b9f0213b7b0ee-1",  # a stack whose name extends ours
            "cm-other-9f54702b9f0213b7b0ee-1",
            "sagemaker-scikit-learn-2026-11-25-00-42-55-123",
        ]:
            for handle in (world.pipeline.on_processing_state, world.pipeline.on_training_state):
                outcome = handle(name, "Failed")
                assert outcome.action is Action.IGNORED
                assert outcome.metrics == {"EventIgnored": 1}
    with subtests.test("a job that is still running"):
        outcome = world.pipeline.on_processing_state(started.job_name, "InProgress")
        assert outcome.action is Action.IGNORED
    with subtests.test("an object outside the raw prefix"):
        outcome = world.pipeline.onboard(upload_event(f"processed/{CITY}/x.csv", 0, 10))
        assert outcome.action is Action.IGNORED
    # THEN nothing moved
    assert world.registry.get_run(CITY, started.run).status == PROCESSING
    assert len(world.sagemaker.processing_requests) == 1


# -- capacity -------------------------------------------------------------------------


def test_no_capacity_queues_a_retry_and_the_retry_starts_the_job(world: World) -> None:
    # GIVEN an account at its processing instance quota
    world.sagemaker.capacity_errors = 2
    # WHEN an upload arrives
    outcome = world.upload(body_of(1))
    # THEN the run waits (PROCESSING, not FAILED), with a message delayed 60 s
    assert outcome.action is Action.WAITING_FOR_CAPACITY
    record = world.registry.get_run(CITY, outcome.run)
    assert record.status == PROCESSING
    assert record.reason.startswith("waiting for SageMaker capacity")
    [sent] = world.sqs.sent
    assert (sent["QueueUrl"], sent["DelaySeconds"]) == (world.aws.retry_queue_url, 60)
    # WHEN the retry finds no capacity either THEN the next delay doubles
    retried = world.pipeline.resume(RetryMessage.from_json(sent["MessageBody"]))
    assert retried.action is Action.WAITING_FOR_CAPACITY
    assert world.sqs.sent[1]["DelaySeconds"] == 120
    # WHEN capacity frees up THEN the retry starts the job, under the run's job name
    started = world.pipeline.resume(RetryMessage.from_json(world.sqs.sent[1]["MessageBody"]))
    assert started.action is Action.STARTED
    [request] = world.sagemaker.processing_requests
    assert request["ProcessingJobName"] == outcome.job_name
    record = world.registry.get_run(CITY, outcome.run)
    assert (record.status, record.reason) == (PROCESSING, "")


def test_no_capacity_for_training_waits_in_training(world: World) -> None:
    started = world.upload(body_of(1))
    world.sagemaker.capacity_errors = 1
    outcome = world.finish_processing(CITY, started.run)
    assert outcome.action is Action.WAITING_FOR_CAPACITY
    message = RetryMessage.from_json(world.sqs.sent[0]["MessageBody"])
    assert (message.kind, message.job_name, message.retries) == ("training", started.job_name, 1)
    assert world.pipeline.resume(message).action is Action.STARTED
    assert world.registry.get_run(CITY, started.run).status == TRAINING


def test_capacity_delays_double_up_to_sqs_maximum() -> None:
    assert [capacity_delay(n) for n in range(7)] == [60, 120, 240, 480, 900, 900, 900]


def test_a_retry_for_a_run_that_moved_on_does_nothing(world: World) -> None:
    # GIVEN a run that waited for capacity, then started anyway (a redelivered event)
    # and finished processing
    world.sagemaker.capacity_errors = 1
    body = body_of(1)
    waiting = world.upload(body)
    assert world.upload(body, put=False).action is Action.STARTED
    world.finish_processing(CITY, waiting.run)
    # WHEN the delayed retry message arrives THEN nothing is created again
    message = RetryMessage.from_json(world.sqs.sent[0]["MessageBody"])
    assert world.pipeline.resume(message).action is Action.STALE
    assert len(world.sagemaker.processing_requests) == 1
    assert world.registry.get_run(CITY, waiting.run).status == TRAINING


def test_a_day_without_capacity_fails_the_run_with_the_reason(world: World) -> None:
    world.sagemaker.capacity_errors = 1
    waiting = world.upload(body_of(1))
    world.sagemaker.capacity_errors = 1
    message = RetryMessage("processing", CITY, waiting.run, waiting.job_name, MAX_CAPACITY_RETRIES)
    outcome = world.pipeline.resume(message)
    assert outcome.action is Action.FAILED
    assert outcome.metrics == {"JobFailed": 1}
    assert "no SageMaker capacity" in world.registry.get_run(CITY, waiting.run).reason


def test_a_job_sagemaker_refuses_to_create_fails_the_run_with_its_words(
    world: World, subtests: pytest.Subtests
) -> None:
    error = AwsError("ValidationException", 400, "Requested resource not found.")

    def processing(minute: int) -> Outcome:
        world.sagemaker.create_errors.append(error)
        return world.upload(body_of(minute), minute=minute)

    def training(minute: int) -> Outcome:
        run = world.upload(body_of(minute), minute=minute).run
        world.sagemaker.create_errors.append(error)
        return world.finish_processing(CITY, run)

    for minute, step in enumerate((processing, training), start=1):
        with subtests.test(step.__name__):
            # GIVEN SageMaker refusing the job's request (no retry will change that)
            # WHEN the step that creates the job runs
            outcome = step(minute)
            # THEN the run ends FAILED with SageMaker's words, rather than wait forever
            assert outcome.action is Action.FAILED
            assert outcome.metrics["JobFailed"] == 1
            record = world.registry.get_run(CITY, outcome.run)
            assert record.status == FAILED
            assert f"{step.__name__} job {outcome.job_name} could not be created" in record.reason
            assert "ValidationException: Requested resource not found." in record.reason
            # AND the same bytes uploaded again get a new attempt
            again = world.upload(body_of(minute), minute=minute + 10)
            assert again.action is Action.STARTED
            assert again.job_name.endswith("-2")


def test_a_throttled_or_server_failed_job_start_waits_on_the_retry_queue_then_starts(
    world: World, subtests: pytest.Subtests
) -> None:
    transient = [
        AwsError("ThrottlingException", 400, "Rate exceeded"),
        AwsError("InternalFailure", 500, "An internal error occurred"),
    ]
    for minute, error in enumerate(transient, start=1):
        with subtests.test(error.code):
            # GIVEN SageMaker answering the job's creation with a transient error
            # (botocore's own retries spent)
            started = world.upload(body_of(minute), minute=minute)
            world.sagemaker.create_errors.append(error)
            # WHEN processing completes and the training job is created
            outcome = world.finish_processing(CITY, started.run)
            # THEN the run waits in TRAINING for the retry queue, as for capacity
            assert outcome.action is Action.WAITING_FOR_CAPACITY
            record = world.registry.get_run(CITY, started.run)
            assert record.status == TRAINING and error.message in record.reason
            # AND the retry starts the job
            message = RetryMessage.from_json(world.sqs.sent[-1]["MessageBody"])
            assert world.pipeline.resume(message).action is Action.STARTED
            assert world.registry.get_run(CITY, started.run).reason == ""


# -- training job and publishing ------------------------------------------------------


def test_a_real_model_is_copied_gated_through_the_endpoint_and_published(world: World) -> None:
    # GIVEN a city's first upload, processed, and a real Linear Learner trained on it
    outcome = world.run_to_end(body_of(1, n=200), minute=1, bias=None)
    # THEN it is published: copied to its own mme/ key, the alias points at it
    run = outcome.run
    assert outcome.action is Action.PUBLISHED, outcome.message
    assert outcome.metrics == {"ModelPublished": 1}
    city = world.registry.get_city(CITY)
    assert (city.current, city.newest_published) == (run, run)
    record = world.registry.get_run(CITY, run)
    assert (record.status, record.model_key) == (PUBLISHED, f"mme/{CITY}/{run}.tar.gz")
    assert exists(world.aws, f"mme/{CITY}/{run}.tar.gz")
    # AND the gate called the candidate through the endpoint (warming it) and beat the median
    assert world.runtime.calls == [f"{CITY}/{run}.tar.gz"]
    gate = read_json(world.aws, f"reports/{CITY}/{run}/gate.json")
    assert gate["passed"] and gate["current_version"] is None
    assert gate["candidate_mae"] < gate["median_mae"]
    assert record.gate == gate
    # AND the run's metrics are the training job's and the gate's
    assert record.metrics["test:absolute_loss"] > 0
    assert record.metrics["gate:candidate_mae"] == pytest.approx(gate["candidate_mae"])
    assert city.current_metrics == record.metrics


def test_the_gate_refuses_a_model_worse_than_the_current_one_beyond_the_tolerance(
    world: World,
) -> None:
    # GIVEN version 1 published, with a test MAE of about 100
    v1 = world.run_to_end(body_of(1), minute=1, bias=100)
    # WHEN version 2's model is three times worse
    v2 = world.run_to_end(body_of(2), minute=2, bias=300)
    # THEN it is NOT_PUBLISHED, the reason gives the numbers, the alias stays on version 1
    assert v2.action is Action.NOT_PUBLISHED
    assert v2.metrics == {"GateRefused": 1, "ModelNotPublished": 1}
    record = world.registry.get_run(CITY, v2.run)
    assert record.status == NOT_PUBLISHED
    assert f"worse than current version {v1.run}'s 100" in record.reason
    assert "tolerance 5%" in record.reason and "300" in record.reason
    gate = read_json(world.aws, f"reports/{CITY}/{v2.run}/gate.json")
    assert gate["passed"] is False
    assert gate["current_mae"] == pytest.approx(100, abs=1)
    assert gate["candidate_mae"] == pytest.approx(300, abs=1)
    assert gate["threshold"] == pytest.approx(1.05 * gate["current_mae"])
    assert world.registry.get_city(CITY).current == v1.run
    # AND both models were called on the same rows
    assert world.runtime.calls[-2:] == [f"{CITY}/{v2.run}.tar.gz", f"{CITY}/{v1.run}.tar.gz"]
    # WHEN version 3's model is worse than version 1's, but within the 5 % tolerance
    v3 = world.run_to_end(body_of(3), minute=3, bias=104)
    # THEN it is published
    assert v3.action is Action.PUBLISHED
    assert world.registry.get_city(CITY).current == v3.run


def test_a_first_model_no_better_than_the_median_is_not_published(world: World) -> None:
    outcome = world.run_to_end(body_of(1), minute=1, bias=10_000_000)
    assert outcome.action is Action.NOT_PUBLISHED
    assert "is not below" in outcome.message and "training median" in outcome.message
    assert world.registry.get_city(CITY).current == ""


def test_a_candidate_failing_on_the_endpoint_is_not_published(world: World) -> None:
    # GIVEN a trained model whose container fails on every request
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    world.write_model(CITY, started.run)
    uri = world.sagemaker.client.describe_training_job(TrainingJobName=started.job_name)
    bucket, key = layout.parse_s3_uri(uri["ModelArtifacts"]["S3ModelArtifacts"])
    world.aws.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"fail": True}))
    # WHEN its training job completes THEN it is not published, and the reason says why
    outcome = world.pipeline.on_training_state(started.job_name, "Completed")
    assert outcome.action is Action.NOT_PUBLISHED
    assert "failed on the endpoint" in outcome.message
    assert world.registry.get_city(CITY).current == ""


def test_a_broken_current_model_does_not_block_its_replacement(world: World) -> None:
    # GIVEN version 1 published, whose artifact has since gone missing
    v1 = world.run_to_end(body_of(1), minute=1)
    world.aws.s3.delete_object(Bucket=BUCKET, Key=f"mme/{CITY}/{v1.run}.tar.gz")
    # WHEN version 2 completes THEN it is judged against the median alone, and published
    v2 = world.run_to_end(body_of(2), minute=2)
    assert v2.action is Action.PUBLISHED
    gate = read_json(world.aws, f"reports/{CITY}/{v2.run}/gate.json")
    assert gate["current_mae"] is None and "not available" in gate["current_error"]


def test_an_older_run_finishing_late_never_replaces_a_newer_model(world: World) -> None:
    # GIVEN two uploads; the newer one's jobs finish first and it is published
    older = world.upload(body_of(1), minute=1)
    newer = world.upload(body_of(2), minute=2)
    world.finish_processing(CITY, newer.run)
    assert world.finish_training(CITY, newer.run).action is Action.PUBLISHED
    # WHEN the older run finishes late (even with a better model)
    world.finish_processing(CITY, older.run)
    late = world.finish_training(CITY, older.run, bias=1)
    # THEN it is NOT_PUBLISHED, superseded; the alias stays; its model is never served
    assert late.action is Action.NOT_PUBLISHED
    assert late.message == f"superseded by version {newer.run}"
    assert late.metrics == {"ModelSuperseded": 1, "ModelNotPublished": 1}
    assert world.registry.get_city(CITY).current == newer.run
    assert not exists(world.aws, f"mme/{CITY}/{older.run}.tar.gz")


def test_after_a_rollback_the_next_newer_upload_publishes(world: World) -> None:
    # GIVEN versions 1 and 2 published, then the city rolled back to version 1
    v1 = world.run_to_end(body_of(1), minute=1, bias=100)
    world.run_to_end(body_of(2), minute=2, bias=100)
    world.registry.rollback(CITY, v1.run)
    # WHEN a newer upload completes
    v3 = world.run_to_end(body_of(3), minute=3, bias=100)
    # THEN it is gated against the served version 1 and published; the pin is lifted
    assert v3.action is Action.PUBLISHED
    assert read_json(world.aws, f"reports/{CITY}/{v3.run}/gate.json")["current_version"] == v1.run
    city = world.registry.get_city(CITY)
    assert (city.current, city.pinned) == (v3.run, False)


def test_a_training_completed_event_delivered_twice_publishes_once(world: World) -> None:
    first = world.run_to_end(body_of(1), minute=1)
    calls = len(world.runtime.calls)
    again = world.pipeline.on_training_state(first.job_name, "Completed")
    assert again.action is Action.STALE
    assert len(world.runtime.calls) == calls
    assert world.registry.get_run(CITY, first.run).status == PUBLISHED


def test_a_retry_after_the_alias_moved_finds_the_version_published_and_listed(
    world: World,
) -> None:
    # GIVEN a publish whose write was made but whose function died before it returned
    body = body_of(1)
    started = world.upload(body)
    world.finish_processing(CITY, started.run)
    world.registry.publish(CITY, started.run, metrics={}, model_key="x", expected_status=[TRAINING])
    # WHEN the event is retried
    outcome = world.finish_training(CITY, started.run)
    # THEN nothing is done again: the alias, the run and its content moved together
    assert outcome.action is Action.STALE
    assert world.registry.get_run(CITY, started.run).status == PUBLISHED
    assert [v.run for v in world.registry.versions(CITY)] == [started.run]
    assert world.registry.rollback(CITY, started.run).current == started.run
    # AND the same bytes uploaded again are a duplicate of that version, not retrained
    again = world.upload(body, minute=2)
    assert again.action is Action.DUPLICATE
    assert world.registry.get_run(CITY, again.run).duplicate_of == started.run


def test_an_existing_different_model_under_the_version_key_is_never_overwritten(
    world: World,
) -> None:
    # GIVEN something else already stored under the run's mme/ key
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    key = f"mme/{CITY}/{started.run}.tar.gz"
    world.aws.s3.put_object(Bucket=BUCKET, Key=key, Body=b"another model")
    # WHEN the training job completes THEN publishing stops loudly, nothing overwritten
    with pytest.raises(ModelOverwriteRefused, match="never overwritten"):
        world.finish_training(CITY, started.run)
    assert world.aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"another model"
    assert world.registry.get_run(CITY, started.run).status == TRAINING


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("Failed", "training job {job} failed: ClientError: Unable to read data channel"),
        ("Stopped", "training job {job} was stopped: MaxRuntimeExceeded"),
    ],
)
def test_a_failed_or_stopped_training_job_records_its_reason(
    world: World, status: str, words: str
) -> None:
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    reason = (
        "ClientError: Unable to read data channel 'train'"
        if status == "Failed"
        else "MaxRuntimeExceeded: Training job exceeded MaxRuntimeInSeconds provided"
    )
    world.sagemaker.descriptions[started.job_name] = {
        "TrainingJobStatus": status,
        "FailureReason": reason,
    }
    outcome = world.pipeline.on_training_state(started.job_name, status)
    record = world.registry.get_run(CITY, started.run)
    assert (outcome.action, record.status) == (Action.FAILED, FAILED)
    assert record.reason.startswith(words.format(job=started.job_name))
    assert outcome.metrics == {"TrainingJobFailed": 1}
    assert world.registry.get_city(CITY).current == ""


def test_retry_messages_round_trip_and_reject_garbage() -> None:
    message = RetryMessage("training", CITY, "r", "cm-cmtest-x-1", 3)
    assert RetryMessage.from_json(message.to_json()) == message
    for body in ("not json", "{}", json.dumps({**json.loads(message.to_json()), "kind": "x"})):
        with pytest.raises(ValueError, match="retry"):
            RetryMessage.from_json(body)
