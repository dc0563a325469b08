"""The scikit-learn executor's runs: each job's own code, compiled once per content."""

from __future__ import annotations

from pathlib import Path

import pytest

from citymodels_devkit.local.sagemaker import executors
from citymodels_devkit.local.sagemaker.executors import CompiledSources, ContainerRun

SCRIPT = """\
import sys
import jobpkg.work

print("file", jobpkg.work.__file__)
try:
    jobpkg.work.run(sys.argv[1])
except ValueError as err:
    import traceback
    print("trace", traceback.format_exc().splitlines()[-3].strip())
    print("where", err.__traceback__.tb_next.tb_frame.f_code.co_filename)
"""

WORK = """\
def run(what):
    if what == "fail":
        raise ValueError(what)
    print("result", {result!r})
"""


def job(root: Path, result: str) -> ContainerRun:
    code = root / "processing" / "input" / "code"
    (code / "jobpkg").mkdir(parents=True)
    (code / "preprocess.py").write_text(SCRIPT)
    (code / "jobpkg" / "__init__.py").write_text("")
    (code / "jobpkg" / "work.py").write_text(WORK.format(result=result))
    script = str(code / "preprocess.py")  # the runner maps the container's paths first
    return ContainerRun("processing", root.name, str(root), ("python3", script))


def run(
    entry: executors.PythonEntrypoint,
    spec: ContainerRun,
    argument: str,
    capsys: pytest.CaptureFixture[str],
) -> dict[str, str]:
    spec = ContainerRun(spec.kind, spec.job_name, spec.ml_root, spec.entrypoint, (argument,))
    assert entry(spec) == 0
    lines = [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]
    return dict(lines)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> CompiledSources:
    cache = CompiledSources()
    monkeypatch.setattr(executors, "_COMPILED", cache)
    return cache


def test_a_bundle_seen_before_is_not_compiled_again(
    tmp_path: Path, compiled: CompiledSources, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = executors.PythonEntrypoint(interface_arguments=())
    first, second = job(tmp_path / "one", "A"), job(tmp_path / "two", "A")
    assert run(entry, first, "go", capsys)["result"] == "A"
    assert compiled.compiled == 2  # the package and its module (the script: runpy)
    # WHEN another job ships the same sources under its own directory
    answer = run(entry, second, "fail", capsys)
    # THEN nothing is compiled again
    assert compiled.compiled == 2
    # AND the module, its functions and the traceback name the second job's files
    work = str(Path(second.ml_root) / "processing/input/code/jobpkg/work.py")
    assert answer["file"] == work
    assert answer["where"] == work
    assert work in answer["trace"]


def test_changed_sources_are_compiled_and_run_as_they_are(
    tmp_path: Path, compiled: CompiledSources, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = executors.PythonEntrypoint(interface_arguments=())
    assert run(entry, job(tmp_path / "one", "A"), "go", capsys)["result"] == "A"
    assert run(entry, job(tmp_path / "two", "B"), "go", capsys)["result"] == "B"
    assert compiled.compiled == 3  # the changed module only
    assert run(entry, job(tmp_path / "three", "A"), "go", capsys)["result"] == "A"
    assert compiled.compiled == 3


def test_imports_outside_a_job_compile_as_python_does(tmp_path: Path) -> None:
    import importlib.machinery

    before = importlib.machinery.SourceFileLoader.source_to_code
    entry = executors.PythonEntrypoint(interface_arguments=())
    spec = job(tmp_path / "one", "A")
    entry(ContainerRun(spec.kind, spec.job_name, spec.ml_root, spec.entrypoint, ("go",)))
    assert importlib.machinery.SourceFileLoader.source_to_code is before
