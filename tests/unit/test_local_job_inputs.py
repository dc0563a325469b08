"""A job worker reads each unchanged small input object once (the processing code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from citymodels_devkit.local.sagemaker_jobs import ObjectCache, _download_prefix
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
    assert _download_prefix(s3, uri, tmp_path / "job1", cache) == 3
    assert len(got) == 3
    # WHEN a second job downloads it after one file changed
    s3.put_object(Bucket=BUCKET, Key="artifacts/processing/preprocess.py", Body=b"v2")
    got.clear()
    assert _download_prefix(s3, uri, tmp_path / "job2", cache) == 3
    # THEN only the changed file is read, and every file is there with its content
    assert got == ["artifacts/processing/preprocess.py"]
    assert (tmp_path / "job2" / "preprocess.py").read_bytes() == b"v2"
    assert (tmp_path / "job2" / "citymodels" / "schema.py").read_bytes() == b"citymodels/schema.py"


def test_large_objects_are_streamed_and_never_kept(s3: Any, tmp_path: Path):
    s3.put_object(Bucket=BUCKET, Key="raw/City/big.csv", Body=b"x" * 2048)
    cache, got = ObjectCache(max_object=1024), reads(s3)
    for job in ("a", "b"):
        _download_prefix(s3, f"s3://{BUCKET}/raw/City/big.csv", tmp_path / job, cache)
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
