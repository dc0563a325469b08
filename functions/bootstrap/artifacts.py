"""The deployment's artifacts in the DataBucket: the processing code and the preprocessor model.

Both carry the ``citymodels`` package, because the code in ``preprocessing/`` runs in
SageMaker's scikit-learn container, where the Lambda layer does not exist (docs/design.md §2):

- ``artifacts/processing/``: ``preprocess.py`` and ``citymodels/``, the processing job's
  code (``PROCESSING_CODE_URI``). Replaced in place: a job downloads it when it starts.
  Keys a new bundle no longer has are deleted, so a removed module cannot linger.
- ``artifacts/preprocessor/{digest}/model.tar.gz``: ``preprocessor.json`` and ``code/``
  (``inference.py`` and ``citymodels/``), the pipeline's first container. The key is
  the archive's content hash: a changed preprocessor is a new key, so CloudFormation
  replaces the SageMaker Model and updates the endpoint, and a rollback still finds
  the old archive. Archives are byte-for-byte reproducible (fixed times, owners and
  order), so an unchanged preprocessor keeps its key and its Model.

The files come from the function's own bundle (``preprocessing/``, copied there by
``sam build`` through a symlink to the repository's ``preprocessing/``) and from the
``citymodels`` package the function imports (the layer in Lambda, the repository when
run locally).

This is deployment code, not domain code: it runs only from the Bootstrap custom
resource (and from the local stack, which calls :func:`publish` directly).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import citymodels
from citymodels import layout

PROCESSING_PREFIX = f"{layout.ARTIFACTS_PREFIX}processing/"
PREPROCESSOR_PREFIX = f"{layout.ARTIFACTS_PREFIX}preprocessor/"
PREPROCESSOR_ARCHIVE = "model.tar.gz"
DIGEST_LENGTH = 16
"""Hex digits of the archive's SHA-256 in its key (64 bits: no collision among versions)."""

PREPROCESSING_DIR = Path(__file__).resolve().parent / "preprocessing"
PACKAGE_DIR = Path(citymodels.__file__).resolve().parent
_PACKAGE_SUFFIXES = (".py", ".typed")


@dataclass(frozen=True)
class Published:
    """Where the artifacts are, as the custom resource returns them to the template."""

    processing_code_uri: str
    preprocessor_model_data_url: str
    preprocessor_sha256: str

    def to_data(self) -> dict[str, str]:
        """The custom resource's ``Data`` (``!GetAtt Bootstrap.<name>``)."""
        return {
            "ProcessingCodeUri": self.processing_code_uri,
            "PreprocessorModelDataUrl": self.preprocessor_model_data_url,
            "PreprocessorSha256": self.preprocessor_sha256,
        }


def package_files(package_dir: Path = PACKAGE_DIR) -> dict[str, bytes]:
    """Return the ``citymodels`` package's files as ``{"citymodels/...": bytes}``.

    Only source files (``*.py`` and ``py.typed``): no ``__pycache__``, whose bytecode
    is for this interpreter, not the container's Python 3.9.
    """
    files = {}
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir)
        if (
            path.is_file()
            and path.suffix in _PACKAGE_SUFFIXES
            and "__pycache__" not in relative.parts
        ):
            files[f"citymodels/{relative.as_posix()}"] = path.read_bytes()
    if "citymodels/__init__.py" not in files:
        raise FileNotFoundError(f"no citymodels package in {package_dir}")
    return files


def processing_bundle(
    preprocessing_dir: Path = PREPROCESSING_DIR, package_dir: Path = PACKAGE_DIR
) -> dict[str, bytes]:
    """Return the processing job's code: ``preprocess.py`` beside ``citymodels/``."""
    return {"preprocess.py": (preprocessing_dir / "preprocess.py").read_bytes()} | package_files(
        package_dir
    )


def preprocessor_document(preprocessing_dir: Path = PREPROCESSING_DIR) -> dict[str, Any]:
    """Return ``preprocessor.json`` as ``preprocessing/inference.py`` defines it."""
    path = preprocessing_dir / "inference.py"
    spec = importlib.util.spec_from_file_location("_citymodels_preprocessor_inference", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    document: dict[str, Any] = module.preprocessor_document()
    return document


def preprocessor_archive(
    preprocessing_dir: Path = PREPROCESSING_DIR, package_dir: Path = PACKAGE_DIR
) -> bytes:
    """Return the preprocessor model's ``model.tar.gz``, reproducibly.

    Layout (what the scikit-learn container expects with
    ``SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code``)::

        preprocessor.json
        code/inference.py
        code/citymodels/...
    """
    document = preprocessor_document(preprocessing_dir)
    members = {
        "preprocessor.json": (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(),
        "code/inference.py": (preprocessing_dir / "inference.py").read_bytes(),
    }
    members.update({f"code/{name}": data for name, data in package_files(package_dir).items()})
    return _tar_gz(members)


def preprocessor_key(archive: bytes) -> str:
    """Return the content-addressed key of a preprocessor archive."""
    digest = hashlib.sha256(archive).hexdigest()[:DIGEST_LENGTH]
    return f"{PREPROCESSOR_PREFIX}{digest}/{PREPROCESSOR_ARCHIVE}"


def publish(
    s3: Any,
    bucket: str,
    *,
    preprocessing_dir: Path = PREPROCESSING_DIR,
    package_dir: Path = PACKAGE_DIR,
) -> Published:
    """Write both artifacts to ``bucket``; return where they are.

    Parameters
    ----------
    s3
        A boto3 S3 client.
    bucket
        The DataBucket.
    preprocessing_dir, package_dir
        Where ``preprocess.py``/``inference.py`` and the ``citymodels`` package are read.

    Returns
    -------
    Published
        The processing code prefix and the preprocessor archive's URL, as ``s3://`` URIs.
    """
    bundle = processing_bundle(preprocessing_dir, package_dir)
    for name, data in bundle.items():
        s3.put_object(Bucket=bucket, Key=f"{PROCESSING_PREFIX}{name}", Body=data)
    stale = sorted(
        set(_keys(s3, bucket, PROCESSING_PREFIX)) - {PROCESSING_PREFIX + n for n in bundle}
    )
    for key in stale:
        s3.delete_object(Bucket=bucket, Key=key)

    archive = preprocessor_archive(preprocessing_dir, package_dir)
    key = preprocessor_key(archive)
    s3.put_object(Bucket=bucket, Key=key, Body=archive, ContentType="application/gzip")
    return Published(
        processing_code_uri=layout.s3_uri(bucket, PROCESSING_PREFIX),
        preprocessor_model_data_url=layout.s3_uri(bucket, key),
        preprocessor_sha256=hashlib.sha256(archive).hexdigest(),
    )


def _keys(s3: Any, bucket: str, prefix: str) -> Iterable[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"]


def _tar_gz(members: Mapping[str, bytes]) -> bytes:
    """A tar.gz of ``members`` that depends only on names and contents."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()
