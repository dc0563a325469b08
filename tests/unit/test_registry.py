"""The registry (moto DynamoDB): runs, the alias that never moves backwards, rollback,
duplicates, jobs, API keys."""

from __future__ import annotations

import pytest

from citymodels.registry import (
    FAILED,
    PROCESSING,
    PUBLISHED,
    REJECTED,
    TRAINING,
    NotPublishable,
    Run,
    UnknownCity,
    UnknownKey,
    UnknownRun,
    hash_secret,
)
from citymodels.versions import mint_version
from tests.aws import Aws

V1 = mint_version("2026-11-25T01:00:00Z", "01")
V2 = mint_version("2026-11-25T02:00:00Z", "02")
V3 = mint_version("2026-11-25T03:00:00Z", "03")
SHA = "ab" * 32


def new_run(aws: Aws, version: str, city: str = "NewYork_NY", status: str = PROCESSING) -> Run:
    run = Run(city=city, run=version, key=f"raw/{city}/{version}.csv", status=status, sha256=SHA)
    assert aws.registry.create_run(run)
    return run


def published(aws: Aws, version: str, city: str = "NewYork_NY") -> bool:
    new_run(aws, version, city)
    aws.registry.update_run(city, version, status=PUBLISHED, metrics={"test:mae": 1.0})
    return aws.registry.publish(
        city, version, metrics={"test:mae": 1.0}, model_key=f"mme/{city}/{version}.tar.gz"
    )


def test_a_run_is_recorded_once_even_if_the_event_comes_twice(aws: Aws) -> None:
    run = new_run(aws, V1)
    assert aws.registry.create_run(run) is False
    assert [r.run for r in aws.registry.list_runs("NewYork_NY")] == [V1]
    assert aws.registry.get_city("NewYork_NY").current == ""


def test_alias_never_moves_backwards(aws: Aws) -> None:
    # GIVEN version 3 published
    assert published(aws, V3)
    # WHEN the older run 2 finishes late THEN the alias stays on 3
    assert published(aws, V2) is False
    city = aws.registry.get_city("NewYork_NY")
    assert (city.current, city.newest_published) == (V3, V3)


def test_rollback_pins_then_a_newer_upload_publishes_as_usual(aws: Aws) -> None:
    published(aws, V1)
    published(aws, V2)
    city = aws.registry.rollback("NewYork_NY", V1)
    assert (city.current, city.pinned) == (V1, True)
    assert published(aws, V3)
    city = aws.registry.get_city("NewYork_NY")
    assert (city.current, city.pinned) == (V3, False)


def test_rollback_to_a_version_never_published_is_refused(aws: Aws) -> None:
    published(aws, V2)
    new_run(aws, V1, status=FAILED)
    with pytest.raises(NotPublishable, match="never published"):
        aws.registry.rollback("NewYork_NY", V1)
    with pytest.raises(UnknownRun):
        aws.registry.rollback("NewYork_NY", V3)


def test_stale_events_do_not_move_a_run_backwards(aws: Aws) -> None:
    new_run(aws, V1)
    assert aws.registry.update_run("NewYork_NY", V1, status=TRAINING, expected_status=[PROCESSING])
    # a redelivered "processing completed" event
    assert (
        aws.registry.update_run("NewYork_NY", V1, status=TRAINING, expected_status=[PROCESSING])
        is None
    )
    assert aws.registry.get_run("NewYork_NY", V1).status == TRAINING


def test_content_attempts_and_publication_are_tracked(aws: Aws) -> None:
    assert aws.registry.get_content("NewYork_NY", SHA) is None
    assert aws.registry.record_attempt("NewYork_NY", SHA, V1) == 1
    assert aws.registry.record_attempt("NewYork_NY", SHA, V2) == 2
    published(aws, V2)
    content = aws.registry.get_content("NewYork_NY", SHA)
    assert content is not None
    assert (content.attempts, content.last_run, content.published_version) == (2, V2, V2)


def test_naming_a_job_records_its_run_or_nothing(aws: Aws) -> None:
    job = "cm-cmtest-0123456789abcdef0123-1"
    new_run(aws, V1, status=FAILED)
    # a run that moved on names no job, and the job has no record
    assert aws.registry.name_job("NewYork_NY", V1, job, expected_status=[PROCESSING]) is False
    assert aws.registry.run_for_job(job) is None
    assert aws.registry.get_run("NewYork_NY", V1).processing_job == ""
    # a run waiting for its job names it, and the job's events find the run
    new_run(aws, V2)
    named = aws.registry.name_job(
        "NewYork_NY", V2, job, expected_status=[PROCESSING], processing_job=job, attempt=1
    )
    assert named is True
    found = aws.registry.run_for_job(job)
    assert found is not None and (found.run, found.processing_job, found.attempt) == (V2, job, 1)
    assert aws.registry.run_for_job("cm-other-0123456789abcdef0123-1") is None


def test_publishing_moves_alias_run_and_content_together_or_not_at_all(aws: Aws) -> None:
    # GIVEN a run that is no longer TRAINING (it failed meanwhile)
    new_run(aws, V1, status=FAILED)
    aws.registry.record_attempt("NewYork_NY", SHA, V1)
    # WHEN it is published on the condition that it is still TRAINING
    moved = aws.registry.publish(
        "NewYork_NY", V1, metrics={}, model_key="mme/x.tar.gz", expected_status=[TRAINING]
    )
    # THEN nothing changed: no alias, no published run, no published content
    assert moved is False
    assert aws.registry.get_city("NewYork_NY").current == ""
    assert aws.registry.get_run("NewYork_NY", V1).status == FAILED
    assert aws.registry.versions("NewYork_NY") == []
    content = aws.registry.get_content("NewYork_NY", SHA)
    assert content is not None and content.published_version == ""
    # AND a TRAINING run publishes: served, PUBLISHED with its reason, listed, its content
    new_run(aws, V2, status=TRAINING)
    assert aws.registry.publish(
        "NewYork_NY",
        V2,
        metrics={"test:mae": 1.0},
        model_key="mme/y.tar.gz",
        reason="gate passed",
        expected_status=[TRAINING],
    )
    run = aws.registry.get_run("NewYork_NY", V2)
    assert (run.status, run.reason, run.model_key) == (PUBLISHED, "gate passed", "mme/y.tar.gz")
    assert aws.registry.get_city("NewYork_NY").current == V2
    assert [v.run for v in aws.registry.versions("NewYork_NY")] == [V2]
    content = aws.registry.get_content("NewYork_NY", SHA)
    assert content is not None and content.published_version == V2


def test_cities_listing_and_unknown_city(aws: Aws) -> None:
    new_run(aws, V1, city="Chicago_IL", status=REJECTED)
    published(aws, V2)
    assert [c.city for c in aws.registry.list_cities()] == ["Chicago_IL", "NewYork_NY"]
    assert aws.registry.get_city("Chicago_IL").serving is False
    with pytest.raises(UnknownCity):
        aws.registry.get_city("Houston_TX")


def test_remove_stops_serving_and_keeps_history(aws: Aws) -> None:
    published(aws, V1)
    city = aws.registry.remove("NewYork_NY")
    assert city.removed
    assert city.serving is False
    assert len(aws.registry.versions("NewYork_NY")) == 1


def test_keys_are_stored_hashed_and_can_be_revoked(aws: Aws) -> None:
    secret, key = aws.registry.create_key(["NewYork_NY", "San*"], description="demo")
    assert secret.startswith("cmk_")
    stored = aws.dynamodb.scan(TableName=aws.table)["Items"]
    assert secret not in str(stored)
    assert hash_secret(secret) in str(stored)
    found = aws.registry.key_for_secret(secret)
    assert found is not None
    assert (found.cities, found.admin) == (["NewYork_NY", "San*"], False)
    assert aws.registry.key_for_secret(secret + "x") is None
    aws.registry.revoke_key(key.key_id)
    assert aws.registry.key_for_secret(secret) is None
    assert [k.revoked for k in aws.registry.list_keys()] == [True]
    with pytest.raises(UnknownKey):
        aws.registry.revoke_key("nope")


def test_the_watched_index_holds_runs_in_flight_and_failed_and_nothing_else(aws: Aws) -> None:
    registry = aws.registry
    # GIVEN three uploads: one in flight, one that failed, one published
    new_run(aws, V1)
    new_run(aws, V2)
    registry.update_run("NewYork_NY", V2, status=TRAINING)
    registry.update_run("NewYork_NY", V2, status=FAILED, reason="training job failed")
    assert published(aws, V3)
    # THEN the index lists the one in flight under PROCESSING and the failed one, only
    assert [(w.run, w.status) for w in registry.watched_runs(PROCESSING)] == [(V1, PROCESSING)]
    assert [w.run for w in registry.watched_runs(TRAINING)] == []
    assert [w.run for w in registry.watched_runs(FAILED)] == [V2]
    assert registry.count_watched(FAILED) == 1
    # AND a bound selects the runs in their status since before it
    (since,) = [w.since for w in registry.watched_runs(PROCESSING)]
    assert registry.count_watched(PROCESSING, before=since) == 0
    assert registry.count_watched(PROCESSING, before="9999") == 1
    # AND a run's own record is unchanged by its index attributes
    assert registry.get_run("NewYork_NY", V1).to_dict().keys() >= {"city", "run", "status"}
    with pytest.raises(ValueError, match="not indexed"):
        list(registry.watched_runs(PUBLISHED))
