"""Crash safety: a function that dies at any AWS call, then gets its event again, ends right.

Each pipeline path (onboard, with and without SageMaker capacity; train, and a
processing job that failed; publish over a serving model, a gate refusal, and a
training job that failed; retry; rollback) is driven on the world of
``tests/unit/test_pipeline.py`` (moto, and SageMaker and the endpoint under botocore's
Stubber). For every k, the k-th AWS call the path makes (DynamoDB, S3, SageMaker, SQS,
SageMaker runtime) crashes the function:

- ``before``: the call is never sent (the function was killed just before it);
- ``after``: the call was made, but the function died before it saw the answer (a write
  that happened, whose answer was lost: the harder case). Tried for every call but the
  reads (``Get*``, ``Head*``, ``Describe*``...), where it is the same as ``before``.

Then the same event is delivered again, as Lambda (async retries), EventBridge and SQS
do; that delivery must complete. Then what follows happens (the jobs run and report),
and the end state must be final, the one the run would have had without the crash, and
consistent: PUBLISHED (listed, served, able to be rolled back to, its bytes a duplicate
if uploaded again) or FAILED / NOT_PUBLISHED (with a reason, not listed, its bytes a new
attempt if uploaded again); one attempt, whose job's events find the run; never a run
left PROCESSING or TRAINING with nothing that would move it.

The crash is a ``BaseException``: no ``except Exception`` in the code can swallow it,
as none can swallow a process that died.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from citymodels import api
from citymodels.endpoint import EndpointClient
from citymodels.pipeline import Action, Outcome, RetryMessage
from citymodels.registry import FAILED, FINAL, NOT_PUBLISHED, PUBLISHED, NotPublishable
from citymodels.versions import mint_version
from tests.aws import BUCKET, ENDPOINT
from tests.unit.test_pipeline import World, body_of, upload_event, world  # noqa: F401

BEFORE, AFTER = "before", "after"
READS = ("Get", "Head", "Describe", "List", "Query", "Scan")
"""Operations that change nothing: dying after one is dying before it, tried once."""


def fault_points(calls: list[str]) -> list[tuple[int, str]]:
    """Each call (1-based) with the ways to die at it: before it, and after it unless it
    is a read."""
    points = [(at, BEFORE) for at in range(1, len(calls) + 1)]
    for at, call in enumerate(calls, start=1):
        if not call.partition(":")[2].startswith(READS):
            points.append((at, AFTER))
    return points


class Crash(BaseException):
    """The function died (a timeout, an out-of-memory kill) at an AWS call."""


@dataclass
class Faults:
    """Counts the AWS calls made while armed, and crashes the ``at``-th one.

    Wraps each client's ``_make_api_call``, the one door every botocore call goes
    through: ``before`` must stop a call before anything of it happens, and the Stubber
    of the SageMaker and endpoint fakes answers (with the fake's side effects) in a
    ``provide-client-params`` hook, earlier than any ``before-call`` hook could run.
    Calls a fake makes while answering (the endpoint fake reads its model from S3) are
    the fake's, not the function's, and are not counted.
    """

    at: int = 0
    mode: str = BEFORE
    calls: list[str] = field(default_factory=list)
    armed: bool = False
    _depth: int = 0

    def install(self, monkeypatch: pytest.MonkeyPatch, *clients: Any) -> None:
        for client in clients:
            service = client.meta.service_model.service_name
            monkeypatch.setattr(
                client, "_make_api_call", self._wrap(service, client._make_api_call)
            )

    def _wrap(self, service: str, call: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        def make_api_call(operation: str, params: Any) -> Any:
            if not self.armed or self._depth:
                return call(operation, params)
            self.calls.append(f"{service}:{operation}")
            crash = len(self.calls) == self.at
            if crash and self.mode == BEFORE:
                raise Crash(f"died before {service}:{operation} (call {self.at})")
            self._depth += 1
            try:
                answer = call(operation, params)
            except Exception as err:
                # an error answer (a 404, a failed condition) is an answer lost too
                if crash:
                    raise Crash(f"died after {service}:{operation} (call {self.at})") from err
                raise
            finally:
                self._depth -= 1
            if crash:
                raise Crash(f"died after {service}:{operation} (call {self.at}) was made")
            return answer

        return make_api_call

    @contextmanager
    def armed_at(self, at: int, mode: str) -> Iterator[None]:
        """Count (and crash at ``at``; 0: never) the calls made inside."""
        self.at, self.mode, self.calls, self.armed = at, mode, [], True
        try:
            yield
        finally:
            self.armed = False


@pytest.fixture
def faults(world: World, monkeypatch: pytest.MonkeyPatch) -> Faults:  # noqa: F811
    found = Faults()
    found.install(
        monkeypatch,
        world.aws.dynamodb,
        world.aws.s3,
        world.aws.sqs,
        world.sagemaker.client,
        world.runtime.client,
    )
    return found


# -- the paths: set-up (no faults), the event delivered, what follows (no faults) -------


@dataclass
class Scenario:
    """One path of one city: the event to deliver, what happens after it, and the end
    the run must reach."""

    city: str
    run: str
    body: bytes
    deliver: Callable[[], object]
    then: Callable[[], object] = lambda: None
    status: str = PUBLISHED
    serving: str = ""
    """The version the city serves at the end (default: the run's when PUBLISHED, else
    none)."""


def _uploaded(
    world: World,  # noqa: F811
    city: str,
    minute: int,
) -> tuple[str, bytes, Callable[[], Outcome]]:
    body = body_of(minute)
    key = f"raw/{city}/houses-{minute}.csv"
    world.aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    event = upload_event(key, minute, len(body))
    run = mint_version(event.time, event.sequencer)
    world.bodies[run] = body
    return run, body, lambda: world.pipeline.onboard(event)


def _processed(world: World, city: str, minute: int) -> tuple[str, bytes, str]:  # noqa: F811
    """An upload whose processing job has written its output (its event not yet sent)."""
    run, body, deliver = _uploaded(world, city, minute)
    assert deliver().action is Action.STARTED
    world.write_processed(city, run)
    return run, body, world.registry.get_run(city, run).processing_job


def _trained(world: World, city: str, minute: int, bias: float) -> tuple[str, bytes, str]:  # noqa: F811
    """An upload whose training job has written its model (its event not yet sent)."""
    run, body, job = _processed(world, city, minute)
    assert world.pipeline.on_processing_state(job, "Completed").action is Action.STARTED
    world.write_model(city, run, bias=bias)
    return run, body, job


def _serving(world: World, city: str) -> str:  # noqa: F811
    """A city serving a first model (MAE 100)."""
    run, _, job = _trained(world, city, 1, 100.0)
    assert world.pipeline.on_training_state(job, "Completed").action is Action.PUBLISHED
    return run


def onboard(world: World, city: str) -> Scenario:  # noqa: F811
    run, body, deliver = _uploaded(world, city, 1)

    def then() -> None:
        world.finish_processing(city, run)
        world.finish_training(city, run)

    return Scenario(city, run, body, deliver, then)


def onboard_waiting(world: World, city: str) -> Scenario:  # noqa: F811
    """An upload SageMaker has no capacity for at first: its job start goes to the queue."""
    run, body, deliver = _uploaded(world, city, 1)
    world.sagemaker.capacity_errors = 1
    queued = len(world.sqs.sent)

    def then() -> None:
        # the retry function gets every message sent (one per delivery that waited)
        for sent in world.sqs.sent[queued:]:
            world.pipeline.resume(RetryMessage.from_json(sent["MessageBody"]))
        world.finish_processing(city, run)
        world.finish_training(city, run)

    return Scenario(city, run, body, deliver, then)


def train(world: World, city: str) -> Scenario:  # noqa: F811
    run, body, job = _processed(world, city, 1)
    deliver = partial(world.pipeline.on_processing_state, job, "Completed")
    return Scenario(city, run, body, deliver, partial(world.finish_training, city, run))


def train_failed(world: World, city: str) -> Scenario:  # noqa: F811
    run, body, job = _processed(world, city, 1)
    world.sagemaker.descriptions[job] = {"FailureReason": "AlgorithmError: out of memory"}
    deliver = partial(world.pipeline.on_processing_state, job, "Failed")
    return Scenario(city, run, body, deliver, status=FAILED)


def publish(world: World, city: str) -> Scenario:  # noqa: F811
    # over a serving model: the gate calls the endpoint with both
    _serving(world, city)
    run, body, job = _trained(world, city, 2, 50.0)
    deliver = partial(world.pipeline.on_training_state, job, "Completed")
    return Scenario(city, run, body, deliver)


def publish_refused(world: World, city: str) -> Scenario:  # noqa: F811
    first = _serving(world, city)
    run, body, job = _trained(world, city, 2, 1000.0)  # far worse than the serving one
    deliver = partial(world.pipeline.on_training_state, job, "Completed")
    return Scenario(city, run, body, deliver, status=NOT_PUBLISHED, serving=first)


def publish_failed(world: World, city: str) -> Scenario:  # noqa: F811
    run, body, job = _trained(world, city, 1, 100.0)
    world.sagemaker.descriptions[job] = {"FailureReason": "ClientError: bad channel"}
    deliver = partial(world.pipeline.on_training_state, job, "Failed")
    return Scenario(city, run, body, deliver, status=FAILED)


def retry(world: World, city: str) -> Scenario:  # noqa: F811
    run, body, deliver = _uploaded(world, city, 1)
    world.sagemaker.capacity_errors = 1
    assert deliver().action is Action.WAITING_FOR_CAPACITY
    message = RetryMessage.from_json(world.sqs.sent[-1]["MessageBody"])

    def then() -> None:
        world.finish_processing(city, run)
        world.finish_training(city, run)

    return Scenario(city, run, body, partial(world.pipeline.resume, message), then)


def rollback(world: World, city: str) -> Scenario:  # noqa: F811
    first = _serving(world, city)
    assert world.run_to_end(body_of(2), minute=2, city=city).action is Action.PUBLISHED
    service = api.CityApi(
        lambda: world.registry,
        lambda: EndpointClient(ENDPOINT, client=world.runtime.client),
        alias_cache_seconds=0,
        deadline_seconds=5,
    )
    caller = api.Caller("admin", ("*",), admin=True)
    deliver = partial(service.rollback, caller, city, first)
    return Scenario(city, first, world.bodies[first], deliver)


PATHS: dict[str, Callable[[World, str], Scenario]] = {
    "onboard": onboard,
    "onboard_waiting": onboard_waiting,
    "train": train,
    "train_failed": train_failed,
    "publish": publish,
    "publish_refused": publish_refused,
    "publish_failed": publish_failed,
    "retry": retry,
    "rollback": rollback,
}


# -- the checks ----------------------------------------------------------------------


def crash_then_redeliver(scenario: Scenario, faults: Faults, at: int, mode: str) -> None:
    """Deliver the event, the function dying at call ``at``; then deliver it again, as
    Lambda, EventBridge and SQS do: that delivery must complete (it has no fault)."""
    with faults.armed_at(at, mode), pytest.raises(Crash):
        scenario.deliver()
    scenario.deliver()


def assert_final_and_consistent(world: World, scenario: Scenario) -> None:  # noqa: F811
    """What a user would see of the city once everything that follows has happened."""
    registry, city, run = world.registry, scenario.city, scenario.run
    record = registry.get_run(city, run)
    assert record.status in FINAL, f"{city} run {run} left {record.status}: {record.reason}"
    # A crash and a redelivery change nothing of the end a run would have had
    assert record.status == scenario.status, f"{city} run {run}: {record.status} {record.reason}"
    # one attempt, and its job's events find this run
    assert record.attempt == 1 and record.processing_job.endswith("-1"), record
    found = registry.run_for_job(record.processing_job)
    assert found is not None and found.run == run
    content = registry.get_content(city, record.sha256)
    assert content is not None
    versions = [v.run for v in registry.versions(city)]
    served = registry.get_city(city)
    serving = scenario.serving or (run if scenario.status == PUBLISHED else "")
    assert served.current == serving, f"{city} serves {served.current!r}, not {serving!r}"
    again = world.upload(scenario.body, minute=59, city=city, name="again.csv")
    if record.status == PUBLISHED:
        assert record.published_at and record.model_key == f"mme/{city}/{run}.tar.gz"
        assert run in versions
        assert content.published_version == run
        # the same bytes again are a duplicate of the version, never trained again
        assert again.action is Action.DUPLICATE, again
        assert registry.get_run(city, again.run).duplicate_of == run
        # and it can be served again by a rollback
        assert registry.rollback(city, run).current == run
    else:
        assert record.reason, record
        assert run not in versions and not record.published_at
        assert content.published_version != run
        # the same bytes again are a new attempt
        assert again.action is Action.STARTED and again.job_name.endswith("-2"), again
        with pytest.raises(NotPublishable):
            registry.rollback(city, run)


@pytest.mark.parametrize("path", PATHS)
def test_a_crash_at_any_aws_call_then_redelivery_ends_final_and_consistent(
    world: World,  # noqa: F811
    faults: Faults,
    path: str,
    subtests: pytest.Subtests,
    record_property: Callable[[str, object], None],
) -> None:
    # GIVEN the path's AWS calls, counted on a delivery without faults
    scenario = PATHS[path](world, f"Count_{path}")
    with faults.armed_at(0, BEFORE):
        scenario.deliver()
    calls = list(faults.calls)
    scenario.then()
    assert_final_and_consistent(world, scenario)
    assert len(calls) >= 2, calls
    points = fault_points(calls)
    tried = 0
    for at, mode in points:
        with subtests.test(mode=mode, at=at, call=calls[at - 1]):
            # GIVEN a city where the path's event arrives
            scenario = PATHS[path](world, f"Crash_{path}_{mode}_{at}")
            # WHEN the function dies at the at-th call, and the event comes again
            crash_then_redeliver(scenario, faults, at, mode)
            tried += 1
            # AND what follows happens (the jobs run and report)
            scenario.then()
            # THEN the end state is final and consistent
            assert_final_and_consistent(world, scenario)
    # every call of the path was a crash point (writes both ways)
    assert tried == len(points) > len(calls)
    record_property("fault_points", tried)
    print(f"\n{path}: {len(calls)} AWS calls, {tried} fault points: {calls}")


CALL_BUDGET = {
    # docs/design.md §3, "AWS calls per city": each call there is justified.
    "onboard": [
        "dynamodb:TransactWriteItems",  # the run and its city, together
        "s3:GetObject",  # the upload's version, validated
        "s3:PutObject",  # the validation report
        "dynamodb:UpdateItem",  # the content's first attempt, if new (else: a duplicate?)
        "s3:CopyObject",  # the run's own input
        "dynamodb:TransactWriteItems",  # the job's name on the run, and the job's record
        "sagemaker:CreateProcessingJob",
    ],
    "train": [
        "dynamodb:GetItem",  # the job's run
        "dynamodb:UpdateItem",  # TRAINING, if still PROCESSING with this job (ALL_NEW)
        "sagemaker:CreateTrainingJob",
    ],
    "publish": [
        "dynamodb:GetItem",  # the job's run
        "dynamodb:GetItem",  # the run: still TRAINING?
        "dynamodb:GetItem",  # the city: newest published, serving, the alias to move
        "sagemaker:DescribeTrainingJob",  # the model's key, the training metrics
        "s3:HeadObject",  # the model's ETag (the copy's provenance)
        "s3:HeadObject",  # mme/ key already there? (never overwritten)
        "s3:CopyObject",  # to mme/
        "s3:GetObject",  # the train split: the median baseline
        "s3:GetObject",  # the raw test split
        "sagemaker-runtime:InvokeEndpoint",  # the candidate
        "sagemaker-runtime:InvokeEndpoint",  # the serving model, on the same rows
        "s3:PutObject",  # the gate's report
        "dynamodb:TransactWriteItems",  # the alias, the run, the content: together
    ],
}


@pytest.mark.parametrize("path", sorted(CALL_BUDGET))
def test_each_event_makes_only_the_aws_calls_of_its_budget(
    world: World,  # noqa: F811
    faults: Faults,
    path: str,
) -> None:
    # GIVEN a city where the path's event arrives
    scenario = PATHS[path](world, f"Budget_{path}")
    # WHEN it is handled
    with faults.armed_at(0, BEFORE):
        scenario.deliver()
    # THEN it made the calls of its budget, no more (each one a Lambda's wait and, for
    # DynamoDB, capacity units)
    assert faults.calls == CALL_BUDGET[path]
    scenario.then()
    assert_final_and_consistent(world, scenario)
