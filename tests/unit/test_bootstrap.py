"""The Bootstrap custom resource: the artifacts it writes, and its answers to CloudFormation.

The artifacts are checked by running them as SageMaker's scikit-learn container would:
in a fresh interpreter that sees nothing but the extracted files and the standard
library, so a module missing from the bundle fails here, not in a processing job.
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import boto3
import pytest
from moto import mock_aws

from citymodels.jobs import MAX_STACK_LENGTH
from citymodels_devkit.archives import extract_safely
from tests.aws import BUCKET, REGION, load_event
from tests.conftest import raw_rows, upload

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_DIR = ROOT / "functions" / "bootstrap"
RUN = "20261125T004255123Z-0062A1B2C3D4E5F60000000000000000"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, FUNCTION_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules() -> Iterator[tuple[ModuleType, ModuleType]]:
    """``artifacts`` and ``custom_resource``, imported as Lambda imports them (top level)."""
    sys.path.insert(0, str(FUNCTION_DIR))
    try:
        yield _load("artifacts"), _load("custom_resource")
    finally:
        sys.path.remove(str(FUNCTION_DIR))


@pytest.fixture(scope="module")
def mocked_s3() -> Iterator[Any]:
    """One mocked S3 for the module (starting moto costs about a second each time)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        with mock_aws():
            yield boto3.client("s3", region_name=REGION)


@pytest.fixture
def s3(mocked_s3: Any) -> Iterator[Any]:
    """The DataBucket, empty (all the Bootstrap function touches)."""
    mocked_s3.create_bucket(Bucket=BUCKET)
    yield mocked_s3
    for item in mocked_s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        mocked_s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    mocked_s3.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def artifacts(modules: tuple[ModuleType, ModuleType]) -> ModuleType:
    return modules[0]


@pytest.fixture
def custom_resource(modules: tuple[ModuleType, ModuleType]) -> ModuleType:
    return modules[1]


def request(request_type: str = "Create", **properties: str) -> dict[str, Any]:
    event = copy.deepcopy(load_event("bootstrap_create"))
    event["RequestType"] = request_type
    if request_type != "Create":
        event["PhysicalResourceId"] = "Bootstrap-artifacts"
    event["ResourceProperties"].update(properties)
    return event


def isolated_python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run Python with only the standard library and ``cwd`` (-I: no user site, no
    PYTHONPATH; -S: no site-packages, so not this repository's citymodels either)."""
    return subprocess.run(
        [sys.executable, "-I", "-S", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


# -- the artifacts -------------------------------------------------------------------


def test_preprocessor_archive_is_reproducible_and_laid_out_for_the_container(
    artifacts: ModuleType,
) -> None:
    archive = artifacts.preprocessor_archive()
    assert artifacts.preprocessor_archive() == archive  # same content, same key, same Model
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        document = json.loads(tar.extractfile("preprocessor.json").read())  # type: ignore[union-attr]
    assert "code/inference.py" in names
    assert "code/citymodels/__init__.py" in names
    assert "code/citymodels/schema.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    inference = artifacts.preprocessor_document()
    assert document == inference
    assert document["format"] == "citymodels-preprocessor"


def test_preprocessor_model_serves_from_its_archive_alone(
    artifacts: ModuleType, tmp_path: Path
) -> None:
    with tarfile.open(fileobj=io.BytesIO(artifacts.preprocessor_archive())) as tar:
        extract_safely(tar, tmp_path / "model")
    script = (
        "import sys; sys.path.insert(0, 'code'); import inference\n"
        "model = inference.model_fn('.')\n"
        "rows = inference.input_fn('1995,2500.5,3,2.5,1.0,2,y,n\\n', 'text/csv')\n"
        "body, kind = inference.output_fn(inference.predict_fn(rows, model), 'text/csv')\n"
        "print(kind, len(body.strip().split(',')))\n"
        "import citymodels; print(citymodels.__file__)\n"
    )
    result = isolated_python("-c", script, cwd=tmp_path / "model")
    assert result.returncode == 0, result.stderr
    kind_and_width, package = result.stdout.splitlines()
    assert kind_and_width == "text/csv 10"  # the ten encoded features
    assert Path(package).is_relative_to(tmp_path / "model" / "code")


def test_processing_bundle_runs_the_processing_job_alone(
    artifacts: ModuleType, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    for name, data in artifacts.processing_bundle().items():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_bytes(data)
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "houses.csv").write_bytes(upload(raw_rows(60)))
    result = isolated_python(
        "preprocess.py",
        f"--input-dir={tmp_path / 'input'}",
        f"--output-dir={tmp_path / 'output'}",
        f"--message-file={tmp_path / 'message'}",
        "--city=NewYork_NY",
        f"--run={RUN}",
        cwd=code,
    )
    assert result.returncode == 0, result.stderr
    for split in ("train", "validation", "test", "test-raw"):
        assert (tmp_path / "output" / split / f"{split}.csv").stat().st_size > 0


def test_publish_writes_both_artifacts_and_removes_stale_code(
    artifacts: ModuleType, s3: Any
) -> None:
    s3.put_object(Bucket=BUCKET, Key="artifacts/processing/citymodels/removed.py", Body=b"")
    published = artifacts.publish(s3, BUCKET)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="artifacts/")["Contents"]
    keys = {item["Key"] for item in listed}
    assert "artifacts/processing/preprocess.py" in keys
    assert "artifacts/processing/citymodels/jobs.py" in keys
    assert "artifacts/processing/citymodels/removed.py" not in keys
    assert published.processing_code_uri == f"s3://{BUCKET}/artifacts/processing/"
    key = published.preprocessor_model_data_url.removeprefix(f"s3://{BUCKET}/")
    assert key in keys
    assert key.startswith("artifacts/preprocessor/") and key.endswith("/model.tar.gz")
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == artifacts.preprocessor_archive()
    # Publishing unchanged code again keeps the key (the Model is not replaced).
    assert artifacts.publish(s3, BUCKET) == published


# -- the custom resource ------------------------------------------------------------


def test_create_writes_the_artifacts_and_returns_where_they_are(
    custom_resource: ModuleType, s3: Any
) -> None:
    response = custom_resource.handle(request("Create"), s3)
    assert response.status == "SUCCESS", response.reason
    assert set(response.data) == {
        "ProcessingCodeUri",
        "PreprocessorModelDataUrl",
        "PreprocessorSha256",
    }
    key = response.data["PreprocessorModelDataUrl"].removeprefix(f"s3://{BUCKET}/")
    s3.head_object(Bucket=BUCKET, Key=key)
    assert response.physical_resource_id == "Bootstrap-artifacts"


def test_update_keeps_the_physical_id_so_cloudformation_never_deletes_it(
    custom_resource: ModuleType, s3: Any
) -> None:
    response = custom_resource.handle(request("Update"), s3)
    assert response.status == "SUCCESS", response.reason
    assert response.physical_resource_id == "Bootstrap-artifacts"


def test_delete_succeeds_and_leaves_the_data(custom_resource: ModuleType, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="artifacts/processing/preprocess.py", Body=b"x")
    response = custom_resource.handle(request("Delete", StackName="X" * 80), s3)
    assert response.status == "SUCCESS"
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1


@pytest.mark.parametrize(
    ("stack", "words"),
    [
        ("s" * (MAX_STACK_LENGTH + 1), f"at most {MAX_STACK_LENGTH} characters"),
        ("CityModels-Dev", "must be lower-case"),
    ],
)
def test_a_stack_name_job_names_cannot_carry_fails_the_deployment(
    custom_resource: ModuleType, s3: Any, stack: str, words: str
) -> None:
    response = custom_resource.handle(request("Create", StackName=stack), s3, "2026/11/25/x")
    assert response.status == "FAILED"
    assert words in response.reason
    assert "(log stream 2026/11/25/x)" in response.reason
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0  # nothing written


def test_a_longest_possible_stack_name_is_accepted(custom_resource: ModuleType, s3: Any) -> None:
    stack = "s" * MAX_STACK_LENGTH
    assert custom_resource.handle(request("Create", StackName=stack), s3).status == "SUCCESS"


def test_any_error_is_answered_as_failed(custom_resource: ModuleType, s3: Any) -> None:
    response = custom_resource.handle(request("Create", Bucket="no-such-bucket"), s3)
    assert response.status == "FAILED"
    assert "NoSuchBucket" in response.reason
    missing = request("Create")
    del missing["ResourceProperties"]["Bucket"]
    assert "Bucket property" in custom_resource.handle(missing, s3).reason


def test_stack_name_falls_back_to_the_stack_id(custom_resource: ModuleType) -> None:
    event = request("Create")
    del event["ResourceProperties"]["StackName"]
    assert custom_resource.stack_name(event) == "cmtest"


# -- the answer over HTTP ------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append((self.command, dict(self.headers), self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def response_url() -> Iterator[str]:
    """A pre-signed-URL stand-in on the loopback interface that records what it gets."""
    _Recorder.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/response?X-Amz-Signature=abc"
    finally:
        server.shutdown()
        server.server_close()


def test_handler_answers_cloudformation_once_with_a_put(
    s3: Any, response_url: str, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(FUNCTION_DIR))
    app = _load("app")
    event = request("Create")
    event["ResponseURL"] = response_url

    app.lambda_handler(event, lambda_context)

    ((method, headers, body),) = _Recorder.received
    assert method == "PUT"
    assert headers.get("Content-Type") == ""  # what the pre-signed URL was signed with
    answer = json.loads(body)
    assert answer["Status"] == "SUCCESS"
    assert answer["RequestId"] == event["RequestId"]
    assert answer["StackId"] == event["StackId"]
    assert answer["LogicalResourceId"] == "Bootstrap"
    assert answer["Data"]["ProcessingCodeUri"] == f"s3://{BUCKET}/artifacts/processing/"
