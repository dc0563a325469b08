"""Each function reaches only the registry partitions its policy in template.yaml names.

The pipeline's and the API's real code runs on moto with a DynamoDB client that refuses,
as IAM would on AWS, every call the acting function's policy does not allow
(``tests/iam.py``); and no policy lets any function write an API key, which only the
key-management path (the CLI, with its caller's credentials) may do.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    parse_api_gateway_arn,
)
from botocore.exceptions import ClientError

from citymodels import api
from citymodels.endpoint import EndpointClient
from citymodels.pipeline import Action, RetryMessage
from citymodels.reconcile import Reconciler, ReconcileSettings
from citymodels.registry import FAILED, PROCESSING, PUBLISHED, TRAINING, WATCHED_INDEX
from tests.aws import ENDPOINT, TABLE
from tests.iam import TEMPLATE, WRITE_ACTIONS, allowed, enforce, statements
from tests.unit.test_pipeline import CITY, World, body_of, world  # noqa: F401 - fixture
from tests.unit.test_reconcile import on_failure_record, upload_event_for

FUNCTIONS = sorted(
    name
    for name, resource in TEMPLATE["Resources"].items()
    if resource["Type"] == "AWS::Serverless::Function"
)
# Partitions of the registry (citymodels.registry's layout), one item key each.
PARTITIONS = ["CITIES", f"CITY#{CITY}", "JOB#cm-cmtest-abc-1", "KEY#" + "ab" * 32, "KEYS"]
ROUTE_ARN = parse_api_gateway_arn(
    "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/v1/GET/cities"
)


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_no_function_can_write_an_api_key(logical_id: str) -> None:
    # Code execution in any function (the CSV-parsing onboard, the internet-facing
    # predict) must not be able to mint an admin key: keys are the CLI's to write.
    for partition in ("KEY#" + "ab" * 32, "KEYS"):
        for action in WRITE_ACTIONS:
            assert not allowed(logical_id, action, [partition]), (logical_id, action, partition)
    # and nothing has the whole table: every statement names its partitions
    for statement in statements(logical_id) + statements(logical_id, WATCHED_INDEX):
        assert "dynamodb:LeadingKeys" in str(statement.get("Condition")), statement
    # and no function scans the table or the index (a request path or a sweep that
    # would read every upload of every city)
    for index in (None, WATCHED_INDEX):
        assert not allowed(logical_id, "Scan", [], index), (logical_id, index)


def test_only_the_reconciler_reads_the_index_and_only_runs_in_flight() -> None:
    readers = {f for f in FUNCTIONS if statements(f, WATCHED_INDEX)}
    assert readers == {"ReconcileFunction"}
    for status in (PROCESSING, TRAINING):
        assert allowed("ReconcileFunction", "Query", [status], WATCHED_INDEX)
    assert not allowed("ReconcileFunction", "Query", [FAILED], WATCHED_INDEX)
    for action in WRITE_ACTIONS:
        assert not allowed("ReconcileFunction", action, [PROCESSING], WATCHED_INDEX)


def test_the_authorizer_only_reads_api_keys() -> None:
    assert allowed("AuthorizeFunction", "GetItem", ["KEY#" + "ab" * 32])
    for partition in PARTITIONS:
        for action in (*WRITE_ACTIONS, "Query", "Scan"):
            assert not allowed("AuthorizeFunction", action, [partition])
    for partition in ("CITIES", f"CITY#{CITY}", "JOB#x", "KEYS"):
        assert not allowed("AuthorizeFunction", "GetItem", [partition])


def test_predicts_one_write_is_the_alias_a_rollback_moves() -> None:
    writable = {
        (action, partition)
        for action in WRITE_ACTIONS
        for partition in PARTITIONS
        if allowed("PredictFunction", action, [partition])
    }
    assert writable == {("UpdateItem", "CITIES")}
    # it reads cities and runs, never jobs or keys
    assert not allowed("PredictFunction", "GetItem", ["KEY#" + "ab" * 32])
    assert not allowed("PredictFunction", "Scan", [])


def test_every_function_path_works_within_its_policy(world: World) -> None:  # noqa: F811
    registry = world.registry
    with enforce(world.aws.dynamodb) as acting:
        # GIVEN an admin key made by the key-management path (the CLI: no function)
        secret, _ = registry.create_key(["*"], admin=True)
        # WHEN an upload arrives and SageMaker has no capacity at first (onboard)
        world.sagemaker.capacity_errors = 1
        acting[0] = "OnboardFunction"
        first = world.upload(body_of(1), minute=1)
        assert first.action is Action.WAITING_FOR_CAPACITY, first
        # AND the retry function starts the job later (retry)
        acting[0] = "RetryFunction"
        message = RetryMessage.from_json(world.sqs.sent[0]["MessageBody"])
        assert world.pipeline.resume(message).action is Action.STARTED
        # AND processing completes (train), then training (publish)
        acting[0] = ""
        world.write_processed(CITY, first.run)
        job = registry.get_run(CITY, first.run).processing_job
        acting[0] = "TrainFunction"
        assert world.pipeline.on_processing_state(job, "Completed").action is Action.STARTED
        acting[0] = ""
        world.write_model(CITY, first.run)
        acting[0] = "PublishFunction"
        assert world.pipeline.on_training_state(job, "Completed").action is Action.PUBLISHED
        acting[0] = ""
        second = world.run_to_end(body_of(2), minute=2)
        assert second.action is Action.PUBLISHED
        # AND a client's key is checked (authorize), then it lists, reads, rolls back (predict)
        acting[0] = "AuthorizeFunction"
        answer = api.authorize(registry, f"Bearer {secret}", ROUTE_ARN)
        assert answer["policyDocument"]["Statement"][0]["Effect"] == "Allow"
        acting[0] = "PredictFunction"
        service = api.CityApi(
            lambda: registry,
            lambda: EndpointClient(ENDPOINT, client=world.runtime.client),
            alias_cache_seconds=0,
            deadline_seconds=5,
        )
        caller = api.Caller("k1", ("*",), admin=True)
        assert [c.city for c in service.list_cities(caller).cities] == [CITY]
        assert service.get_city(caller, CITY).current_version == second.run
        assert service.rollback(caller, CITY, first.run).current_version == first.run
        # THEN every call above was allowed; and the same client refuses what is not
        with pytest.raises(ClientError, match="AccessDenied"):
            registry.create_key(["*"], admin=True)
        acting[0] = "OnboardFunction"
        with pytest.raises(ClientError, match="AccessDenied"):
            registry.revoke_key("k1")
    assert registry.get_run(CITY, first.run).status == PUBLISHED


def test_the_reconcilers_decisions_and_replays_work_within_its_policy(world: World) -> None:  # noqa: F811
    later = datetime.now(UTC) + timedelta(hours=2)
    reconciler = Reconciler(
        world.pipeline,
        ReconcileSettings(5400, 129_600, world.aws.failure_queue_url),
        sqs=world.aws.sqs,
        clock=lambda: later,
    )
    # GIVEN a run whose processing job completed but whose event found no run (no JOB#),
    # and a run whose training job completed but whose event was lost
    first = world.upload(body_of(1), minute=1)
    world.aws.dynamodb.delete_item(
        TableName=TABLE, Key={"pk": {"S": f"JOB#{first.job_name}"}, "sk": {"S": "JOB"}}
    )
    world.write_processed(CITY, first.run)
    second = world.upload(body_of(2), minute=2, city="Boston_MA")
    world.finish_processing("Boston_MA", second.run)
    world.write_model("Boston_MA", second.run)
    # AND an onboard failure waiting in the FailureQueue
    world.aws.sqs.send_message(
        QueueUrl=world.aws.failure_queue_url,
        MessageBody=json.dumps(on_failure_record(upload_event_for(world, body_of(3)), "onboard")),
    )
    with enforce(world.aws.dynamodb) as acting:
        # WHEN the reconciler sweeps, as the ReconcileFunction
        acting[0] = "ReconcileFunction"
        outcomes = reconciler.sweep()
    # THEN every call was allowed, and each run moved on
    assert sorted(o.action.value for o in outcomes) == ["published", "started", "started"]
    assert world.registry.get_run(CITY, first.run).status == TRAINING
    assert world.registry.get_run("Boston_MA", second.run).status == PUBLISHED
