"""A job worker reads each unchanged small input object once (the processing code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from citymodels_devkit.local.sagemaker.staging import ObjectCache, download_prefix
from tests.aws import BUCKET, Aws


@pytest.fixture
def s3(aws: Aws) -> Any:
    """S3 of the shared moto account (tests/aws.py), with its DataBucket."""
    return aws.s3


def reads(s3: Any) -> list[str]:
    """The keys of every GetObject the client sends from now on."""
    keys: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: keys.append(params["Key"])
    )
    return keys


def test_unchanged_objects_are_read_once_and_a_changed_one_again(s3: Any, tmp_path: Path):
    # GIVEN the processing code under a prefix, downloaded once by a worker
    for name in ("preprocess.py", "citymodels/__init__.py", "citymodels/schema.py"):
        s3.put_object(Bucket=BUCKET, Key=f"artifacts/processing/{name}", Body=name.encode())
    cache, got = ObjectCache(), reads(s3)
    uri = f"s3://{BUCKET}/artifacts/processing/"
    assert download_prefix(s3, uri, tmp_path / "job1", cache) == 3
    assert len(got) == 3
    # WHEN a second job downloads it after one file changed
    s3.put_object(Bucket=BUCKET, Key="artifacts/processing/preprocess.py", Body=b"v2")
    got.clear()
    assert download_prefix(s3, uri, tmp_path / "job2", cache) == 3
    # THEN only the changed file is read, and every file is there with its content
    assert got == ["artifacts/processing/preprocess.py"]
    assert (tmp_path / "job2" / "preprocess.py").read_bytes() == b"v2"
    assert (tmp_path / "job2" / "citymodels" / "schema.py").read_bytes() == b"citymodels/schema.py"


def test_large_objects_are_streamed_and_never_kept(s3: Any, tmp_path: Path):
    s3.put_object(Bucket=BUCKET, Key="raw/City/big.csv", Body=b"x" * 2048)
    cache, got = ObjectCache(max_object=1024), reads(s3)
    for job in ("a", "b"):
        download_prefix(s3, f"s3://{BUCKET}/raw/City/big.csv", tmp_path / job, cache)
        assert (tmp_path / job / "big.csv").stat().st_size == 2048
    assert got == ["raw/City/big.csv", "raw/City/big.csv"]


def test_the_least_recently_used_objects_leave_first_within_the_budget() -> None:
    cache = ObjectCache(max_total=10, max_object=10)
    cache.put("b", "one", "e1", b"1234")
    cache.put("b", "two", "e2", b"1234")
    assert cache.get("b", "one", "e1") == b"1234"  # "one" is now the most recent
    cache.put("b", "three", "e3", b"1234")  # 12 bytes > 10: "two" goes
    assert cache.get("b", "two", "e2") is None
    assert cache.get("b", "one", "e1") == b"1234"
    assert cache.get("b", "one", "other-etag") is None  # another version: not this one


def test_a_jobs_small_outputs_are_taken_by_the_next_job_without_reading_s3(
    s3: Any, tmp_path: Path
) -> None:
    # GIVEN a processing job's split uploaded by one worker, through the shared folder
    uploader = ObjectCache(handoff=tmp_path / "handoff")
    key = "processed/City/run/train/train.csv"
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=b"1,2,3\n")["ETag"]
    uploader.leave(BUCKET, key, etag, b"1,2,3\n")
    # WHEN the training job, in another worker, downloads the split twice (run again)
    reader, got = ObjectCache(max_total=0, handoff=tmp_path / "handoff"), reads(s3)
    uri = f"s3://{BUCKET}/processed/City/run/train/"
    assert download_prefix(s3, uri, tmp_path / "job1", reader) == 1
    assert download_prefix(s3, uri, tmp_path / "job2", reader) == 1
    # THEN the first took the bytes left for it, the second read S3; both have them
    assert got == [key]
    for job in ("job1", "job2"):
        assert (tmp_path / job / "train.csv").read_bytes() == b"1,2,3\n"


def test_changed_bytes_under_the_same_key_are_never_taken(s3: Any, tmp_path: Path) -> None:
    # GIVEN an output left for the next job, then overwritten in S3
    cache = ObjectCache(max_total=0, handoff=tmp_path / "handoff")
    key = "processed/City/run/test/test.csv"
    old = s3.put_object(Bucket=BUCKET, Key=key, Body=b"old\n")["ETag"]
    cache.leave(BUCKET, key, old, b"old\n")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"new\n")
    # WHEN a job downloads it THEN it reads the new bytes from S3
    got = reads(s3)
    download_prefix(s3, f"s3://{BUCKET}/processed/City/run/test/", tmp_path / "job", cache)
    assert got == [key]
    assert (tmp_path / "job" / "test.csv").read_bytes() == b"new\n"


def test_a_training_jobs_sibling_channels_are_listed_once(s3: Any, tmp_path: Path) -> None:
    # GIVEN a run's three splits, each a channel of a training job
    from citymodels_devkit.local.sagemaker.staging import download_training_inputs

    prefix = "processed/City/run"
    for split in ("train", "validation", "test", "test-raw"):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{split}/{split}.csv", Body=split.encode())
    lists: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: lists.append(params["Prefix"])
    )
    channels = [
        {
            "ChannelName": split,
            "DataSource": {"S3DataSource": {"S3Uri": f"s3://{BUCKET}/{prefix}/{split}/"}},
        }
        for split in ("train", "validation", "test")
    ]
    # WHEN its inputs are downloaded
    download_training_inputs(s3, {"InputDataConfig": channels}, tmp_path, "us-east-1")
    # THEN one listing served the three, and each channel holds its own split only
    assert lists == [f"{prefix}/"]
    for split in ("train", "validation", "test"):
        files = list((tmp_path / "input" / "data" / split).iterdir())
        assert [f.read_bytes() for f in files] == [split.encode()]
