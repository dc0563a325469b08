"""The HTTP API against its own served OpenAPI document, fuzzed by schemathesis.

schemathesis reads ``GET /openapi.json`` from the local stack, generates valid and
invalid requests for every operation (examples, boundary values, random data) and runs
all of its checks on the answers: no 5xx, every status and body documented, invalid
data rejected, valid data accepted, a request without the key refused. The command is
the one ``docs/application.md`` gives, with the stack's URL and admin key.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from citymodels_devkit.paths import REPO_ROOT
from tests.integration.conftest import Running

MAX_EXAMPLES = 20
"""Examples per operation and phase: enough to find the issue-12 answers in a few seconds."""


def test_schemathesis_finds_nothing_wrong_with_any_operation(
    local: Running, tmp_path: Path
) -> None:
    # GIVEN the local stack serving its OpenAPI document, and an admin key
    document = local.outputs["ApiUrl"] + "openapi.json"
    report = tmp_path / "report.ndjson"
    # WHEN schemathesis runs every check on every operation, with a fixed seed
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(REPO_ROOT / "schemathesis.toml"),
            "run",
            document,
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {local.outputs['AdminApiKey']}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        check=False,
        cwd=tmp_path,  # schemathesis keeps its example database in the working directory
    )
    # THEN every operation was tested and nothing failed
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None and counts[1] == counts[2], run.stdout[-3000:]
    assert int(counts[1]) >= 100, run.stdout[-3000:]  # it really ran, on every operation
    assert "Tested: 4" in run.stdout, run.stdout[-3000:]
    assert report.read_text().strip(), "schemathesis wrote no report"
