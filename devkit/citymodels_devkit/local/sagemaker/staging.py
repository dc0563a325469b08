"""S3 staging of a job, as SageMaker does it: inputs downloaded, outputs uploaded.

A job worker (:mod:`.runner`) downloads every ``S3Prefix`` input into the job's
container directory before the executor runs, and uploads what the executor wrote
after: a processing job's ``ProcessingOutputConfig`` outputs, a training job's
``model/`` as ``model.tar.gz`` (and ``output/data/`` as ``output.tar.gz``). S3 is
reached through the local stack's own AWS endpoint with boto3, so job outputs are
ordinary S3 writes, with their ``Object Created`` events, as on AWS.

Staging costs fewer S3 calls than SageMaker's (same files): :class:`ObjectCache`
keeps the small objects a worker read by key and ETag (the processing code), a job's
small outputs are left for the job that reads them next (a training job's splits)
unless their ETag changed, and a training job's sibling channels are listed once.

Limits: S3 inputs only (``S3Prefix``, not ``ManifestFile``, no Gzip channels, no
dataset definitions); a broken one fails the job with ``ClientError: ...``
(:class:`InputError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from citymodels_devkit.local.sagemaker.executors import host_path

__all__ = [
    "HANDOFF_SECONDS",
    "PROCESSING_ROOT",
    "InputError",
    "ObjectCache",
    "download_prefix",
    "download_processing_inputs",
    "download_training_inputs",
    "list_objects",
    "split_s3_uri",
    "upload_model",
    "upload_processing_outputs",
    "worker_cache",
]

HANDOFF_SECONDS: Final = 900
"""How long a job's small output waits in the workers' shared folder for the job that
reads it next (a training job waits for a worker, rarely for long)."""
PROCESSING_ROOT: Final = "/opt/ml/processing"


class InputError(Exception):
    """The job's input cannot be read: the job fails with ``ClientError: <message>``."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if match is None:
        raise InputError(f"{uri!r} is not an s3:// URI")
    return match.group(1), match.group(2)


class ObjectCache:
    """Small S3 objects a job worker has read, by bucket, key and ETag (least recent out).

    Every processing job downloads the same processing code (about 20 objects under
    ``artifacts/processing/``); the listing that a download starts with already gives
    each object's ETag, so an object whose key and ETag were read before is not read
    again: the same bytes, one ``GetObject`` fewer, in a worker that keeps them. Only
    objects up to ``max_object`` bytes are kept, ``max_total`` in all.

    With a ``handoff`` directory (shared by the workers), the small objects a job
    uploads (a processing job's splits) are left there for the one job that reads them
    next (the run's training job, in any worker): it takes them, by key and ETag, and
    does not read them from S3 again.
    """

    def __init__(
        self,
        max_total: int = 32 << 20,
        max_object: int = 1 << 20,
        handoff: Path | None = None,
    ) -> None:
        self.max_total, self.max_object = max_total, max_object
        self.handoff = handoff
        self._pruned = time.time()
        self._objects: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._size = 0

    def get(self, bucket: str, key: str, etag: str) -> bytes | None:
        data = self._objects.get((bucket, key, etag))
        if data is not None:
            self._objects.move_to_end((bucket, key, etag))
            return data
        path = self._handoff_path(bucket, key, etag)
        if path is None:
            return None
        try:
            data = path.read_bytes()
            path.unlink()  # taken: read once (a job run again reads S3)
        except OSError:
            return None
        return data

    def leave(self, bucket: str, key: str, etag: str, data: bytes) -> None:
        """Leave an uploaded object for the job that reads it next."""
        path = self._handoff_path(bucket, key, etag)
        if path is None or len(data) > self.max_object:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(path)  # whole or absent, whoever looks
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Forget what no job took within :data:`HANDOFF_SECONDS` (e.g. outputs no job
        reads), looking at most once a minute: the folder stays small."""
        now = time.time()
        if now - self._pruned < 60:
            return
        self._pruned = now
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > HANDOFF_SECONDS:
                    entry.unlink()

    def _handoff_path(self, bucket: str, key: str, etag: str) -> Path | None:
        if self.handoff is None or not etag:
            return None
        name = hashlib.sha256(f"{bucket}\0{key}\0{etag.strip(chr(34))}".encode()).hexdigest()
        return self.handoff / name

    def put(self, bucket: str, key: str, etag: str, data: bytes) -> None:
        if len(data) > self.max_object or (bucket, key, etag) in self._objects:
            return
        self._objects[(bucket, key, etag)] = data
        self._size += len(data)
        while self._size > self.max_total:
            _, evicted = self._objects.popitem(last=False)
            self._size -= len(evicted)


worker_cache = ObjectCache()


def list_objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under a prefix (``ListObjectsV2``, all pages)."""
    from botocore.exceptions import ClientError

    try:
        return [
            item
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]
    except ClientError as error:
        raise InputError(f"cannot read s3://{bucket}/{prefix}: {error}") from error


def download_prefix(
    s3: Any,
    uri: str,
    destination: Path,
    cache: ObjectCache | None = None,
    listing: list[dict[str, Any]] | None = None,
) -> int:
    """Download every object under an ``S3Prefix`` as SageMaker does; return the count.

    Keys keep their path relative to the prefix's last ``/``: the prefix
    ``s3://b/raw/City/x.csv`` gives ``x.csv``, ``s3://b/processed/.../train/`` gives
    ``train.csv`` for ``.../train/train.csv``. Objects already in ``cache`` (this
    worker's, by default) with the listed ETag are not read again. ``listing``: the
    objects of a wider prefix of the same bucket, already listed (saves a listing).
    """
    cache = worker_cache if cache is None else cache
    from botocore.exceptions import ClientError

    bucket, prefix = split_s3_uri(uri)
    base = prefix[: prefix.rfind("/") + 1]
    destination.mkdir(parents=True, exist_ok=True)
    count = 0
    if listing is None:
        listing = list_objects(s3, bucket, prefix)
    try:
        for item in (i for i in listing if i["Key"].startswith(prefix)):
            key = item["Key"]
            if key.endswith("/"):
                continue
            target = (destination / key[len(base) :]).resolve()
            if not target.is_relative_to(destination.resolve()):
                raise InputError(f"S3 key {key!r} would be written outside {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            etag = item.get("ETag", "")
            data = cache.get(bucket, key, etag) if etag else None
            if data is not None:
                target.write_bytes(data)
            elif etag and item.get("Size", cache.max_object + 1) <= cache.max_object:
                answer = s3.get_object(Bucket=bucket, Key=key)
                data = answer["Body"].read()
                target.write_bytes(data)
                # keyed by the ETag of the bytes read (the object may have changed
                # since the listing)
                cache.put(bucket, key, answer.get("ETag", ""), data)
            else:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                with target.open("wb") as out:
                    shutil.copyfileobj(body, out, 1 << 20)
            count += 1
    except ClientError as error:
        raise InputError(f"cannot read {uri}: {error}") from error
    return count


def download_processing_inputs(s3: Any, request: Mapping[str, Any], ml_root: Path) -> None:
    for item in request.get("ProcessingInputs", []):
        name = item.get("InputName", "?")
        source = item.get("S3Input")
        if source is None:
            raise InputError(f"input {name!r}: the local stack reads S3Input inputs only")
        if source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise InputError(f"input {name!r}: the local stack reads S3Prefix inputs only")
        if source.get("S3CompressionType", "None") != "None":
            raise InputError(f"input {name!r}: the local stack reads uncompressed inputs only")
        local = source.get("LocalPath", "")
        if not local.startswith(PROCESSING_ROOT + "/"):
            raise InputError(f"input {name!r}: LocalPath must be under {PROCESSING_ROOT}/")
        if download_prefix(s3, source["S3Uri"], Path(host_path(local, ml_root))) == 0:
            raise InputError(f"No objects exist under the S3 prefix {source['S3Uri']}")


def download_training_inputs(
    s3: Any, request: Mapping[str, Any], ml_root: Path, region: str
) -> None:
    config_dir = ml_root / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    mode = request.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File")
    channels: dict[str, dict[str, str]] = {}
    listings = _sibling_listings(s3, request.get("InputDataConfig", []))
    for channel in request.get("InputDataConfig", []):
        name = channel["ChannelName"]
        source = channel.get("DataSource", {}).get("S3DataSource")
        if source is None:
            raise InputError(f"channel {name!r}: the local stack reads S3DataSource only")
        if source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise InputError(f"channel {name!r}: the local stack reads S3Prefix sources only")
        if channel.get("CompressionType", "None") != "None":
            raise InputError(f"channel {name!r}: the local stack reads uncompressed data only")
        uri = source["S3Uri"]
        listing = listings.get(uri)
        if download_prefix(s3, uri, ml_root / "input" / "data" / name, listing=listing) == 0:
            bucket, _ = split_s3_uri(uri)
            raise InputError(
                f'No S3 objects found under S3 URL "{uri}" given in input data source. '
                f"Please ensure that the bucket exists in the selected region ({region}), "
                f'that objects exist under that S3 prefix, and that the role "'
                f'{request.get("RoleArn", "")}" has "s3:ListBucket" permissions on bucket '
                f'"{bucket}".'
            )
        settings = {
            "TrainingInputMode": channel.get("InputMode", mode),
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        if "ContentType" in channel:
            settings["ContentType"] = channel["ContentType"]
        channels[name] = settings
    hyperparameters = request.get("HyperParameters", {})
    (config_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config_dir / "inputdataconfig.json").write_text(json.dumps(channels))
    (config_dir / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )


def _sibling_listings(s3: Any, channels: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One listing for the channels whose prefixes are folders of one parent folder.

    A training job's channels are usually siblings (``processed/{city}/{run}/train/``,
    ``.../validation/``, ``.../test/``): listing their parent once serves them all,
    one ``ListObjectsV2`` instead of one per channel. Returns channel URI → listing.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for channel in channels:
        source = channel.get("DataSource", {}).get("S3DataSource") or {}
        uri = str(source.get("S3Uri", ""))
        match = re.fullmatch(r"s3://([^/]+)/(.+/)[^/]+/", uri)
        if match is not None:
            groups.setdefault((match.group(1), match.group(2)), []).append(uri)
    listings: dict[str, list[dict[str, Any]]] = {}
    for (bucket, parent), uris in groups.items():
        if len(uris) > 1:
            listing = list_objects(s3, bucket, parent)
            listings.update(dict.fromkeys(uris, listing))
    return listings


def _upload_directory(s3: Any, local: Path, uri: str) -> int:
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/")
    count = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix, path.relative_to(local).as_posix()]))
        if path.stat().st_size <= worker_cache.max_object:
            # small: one PutObject, whose ETag lets the next job take these bytes
            data = path.read_bytes()
            answer = s3.put_object(Bucket=bucket, Key=key, Body=data)
            worker_cache.leave(bucket, key, answer.get("ETag", ""), data)
        else:
            s3.upload_file(str(path), bucket, key)
        count += 1
    return count


def upload_processing_outputs(s3: Any, request: Mapping[str, Any], ml_root: Path) -> None:
    for output in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
        target = output.get("S3Output")
        if target is None:
            continue  # FeatureStoreOutput: nothing the local stack models
        local = Path(host_path(target["LocalPath"], ml_root))
        if local.is_dir():
            _upload_directory(s3, local, target["S3Uri"])


def upload_model(s3: Any, request: Mapping[str, Any], name: str, ml_root: Path) -> str:
    """Upload ``model/`` as SageMaker does; return ``S3ModelArtifacts``.

    SageMaker tars the container's ``/opt/ml/model`` into ``model.tar.gz``; a
    container that wrote exactly one ``model.tar.gz`` there (the local Linear
    Learner) has it uploaded as it is.
    """
    output_path = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    model_dir = ml_root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    if [p.relative_to(model_dir).as_posix() for p in files] == ["model.tar.gz"]:
        archive = files[0]
    else:
        archive = ml_root / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(files):
                tar.add(path, arcname=path.relative_to(model_dir).as_posix())
    uri = f"{output_path}/{name}/output/model.tar.gz"
    bucket, key = split_s3_uri(uri)
    s3.upload_file(str(archive), bucket, key)
    data_dir = ml_root / "output" / "data"
    if data_dir.is_dir() and any(p.is_file() for p in data_dir.rglob("*")):
        extra = ml_root / "output.tar.gz"
        with tarfile.open(extra, "w:gz") as tar:
            for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
                tar.add(path, arcname=path.relative_to(data_dir).as_posix())
        bucket, key = split_s3_uri(f"{output_path}/{name}/output/output.tar.gz")
        s3.upload_file(str(extra), bucket, key)
    return uri
