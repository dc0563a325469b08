"""What an image runs: the executors of the local job service, inside a worker process.

SageMaker runs a job's container; the local stack runs, in one of its worker
processes (:mod:`.runner`), the *executor* its image maps to (by substring,
:data:`DEFAULT_EXECUTORS`, configurable), with the container root ``/opt/ml`` mapped
to a directory of the worker's (:class:`ContainerRun`):

- ``sklearn`` / ``scikit-learn``: :class:`PythonEntrypoint` runs the job's
  ``ContainerEntrypoint`` (``python3 /opt/ml/processing/input/code/preprocess.py``)
  from the *downloaded* code input, in the worker, with ``runpy``; the exit status
  comes from ``SystemExit``. Container paths in the arguments are mapped, and the
  script's own container-path defaults are passed to it as ``--input-dir``,
  ``--output-dir`` and ``--message-file`` (``preprocess.py``'s interface). The
  ``citymodels`` package the script imports is the one shipped beside it in the
  code bundle, as in the container: the devkit's installed copy is hidden.
- ``linear-learner``: :func:`run_linear_learner`, the local Linear Learner's
  training-container contract.

Another image has no executor (:func:`executor_for` returns None): the job fails
with a ``FailureReason`` that says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import os
import re
import runpy
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any, Final

__all__ = [
    "CONTAINER_ROOT",
    "DEFAULT_EXECUTORS",
    "PROCESSING_SCRIPT_INTERFACE",
    "ContainerRun",
    "Executor",
    "PythonEntrypoint",
    "executor_for",
    "host_argument",
    "host_path",
    "run_linear_learner",
]

CONTAINER_ROOT: Final = "/opt/ml"


@dataclass(frozen=True)
class ContainerRun:
    """One container run, as an executor sees it.

    Attributes
    ----------
    kind
        ``processing`` or ``training``.
    job_name
        The job's name.
    ml_root
        The local directory standing for the container's ``/opt/ml``.
    entrypoint, arguments
        ``AppSpecification.ContainerEntrypoint`` / ``ContainerArguments`` (processing),
        container paths already mapped under ``ml_root``.
    """

    kind: str
    job_name: str
    ml_root: str
    entrypoint: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()

    def host_path(self, container_path: str) -> str:
        """Map a container path (``/opt/ml/...``) to its local directory."""
        return host_path(container_path, Path(self.ml_root))


Executor = Callable[[ContainerRun], int]
"""Runs a container in the worker process and returns its exit status. Must be
picklable (a module-level function or an instance of a module-level class)."""


def host_path(container_path: str, ml_root: Path) -> str:
    """Map ``/opt/ml`` and everything under it to ``ml_root``; leave other paths alone."""
    if container_path == CONTAINER_ROOT:
        return str(ml_root)
    if container_path.startswith(CONTAINER_ROOT + "/"):
        return str(ml_root / container_path[len(CONTAINER_ROOT) + 1 :])
    return container_path


def host_argument(argument: str, ml_root: Path) -> str:
    """Map a container path in an argument, bare or as ``--flag=/opt/ml/...``."""
    if argument.startswith("-") and "=" in argument:
        flag, value = argument.split("=", 1)
        return f"{flag}={host_path(value, ml_root)}"
    return host_path(argument, ml_root)


PROCESSING_SCRIPT_INTERFACE: Final = (
    ("--input-dir", "/opt/ml/processing/input/raw"),
    ("--output-dir", "/opt/ml/processing/output"),
    ("--message-file", "/opt/ml/output/message"),
)
"""The container paths of ``preprocessing/preprocess.py`` (its defaults), passed to it
as arguments because a local process cannot see ``/opt/ml``."""

_PYTHON = re.compile(r"python(3(\.\d+)?)?")
_PYTHON_FLAGS = frozenset({"-u", "-B", "-O", "-OO", "-s", "-E", "-I", "-b", "-bb", "-q"})


@dataclass(frozen=True)
class PythonEntrypoint:
    """Executor of the scikit-learn image: runs a Python entrypoint in the worker.

    ``python3 [flags] SCRIPT ARGS...`` runs ``SCRIPT`` with :func:`runpy.run_path`,
    ``python3 -m MODULE ARGS...`` with :func:`runpy.run_module`, as ``__main__``,
    with ``sys.argv`` set, the script's directory first on ``sys.path`` and the
    working directory at the container root. Modules the script's directory provides
    (the shipped ``citymodels`` package) are imported from there for the run and
    forgotten afterwards, so the code under test is the code bundle's.

    Parameters
    ----------
    interface_arguments
        ``(flag, container path)`` pairs added to the arguments, mapped, when the job
        does not pass the flag itself: how a script whose defaults are container
        paths finds its directories locally (:data:`PROCESSING_SCRIPT_INTERFACE`).
    container_only_packages
        Packages installed here but not in the container: during the run they import
        only from the script's directory (the code bundle), so a bundle that lacks
        them fails as it would in SageMaker rather than borrowing the devkit's copy.
    """

    interface_arguments: tuple[tuple[str, str], ...] = PROCESSING_SCRIPT_INTERFACE
    container_only_packages: tuple[str, ...] = ("citymodels", "citymodels_devkit")

    def __call__(self, run: ContainerRun) -> int:
        """Run the entrypoint; return its exit status."""
        command = [*run.entrypoint, *run.arguments]
        if not command:
            print("the job has no ContainerEntrypoint to run", file=sys.stderr)
            return 127
        if _PYTHON.fullmatch(Path(command[0]).name) is None:
            print(
                f"the local stack runs Python entrypoints only (python3 SCRIPT ...), "
                f"not {command[0]!r}",
                file=sys.stderr,
            )
            return 127
        rest = command[1:]
        while rest and rest[0] in _PYTHON_FLAGS:
            rest.pop(0)
        given = {argument.split("=", 1)[0] for argument in rest}
        extra = [
            item
            for flag, path in self.interface_arguments
            if flag not in given
            for item in (flag, run.host_path(path))
        ]
        if len(rest) >= 2 and rest[0] == "-m":
            return _run_python(
                None,
                rest[1],
                [rest[1], *rest[2:], *extra],
                Path(run.ml_root),
                self.container_only_packages,
            )
        if not rest or rest[0].startswith("-"):
            print(f"cannot run {' '.join(command)!r}: expected python3 SCRIPT", file=sys.stderr)
            return 2
        script = Path(rest[0])
        if not script.is_file():
            print(f"python3: can't open file {rest[0]!r}: no such file", file=sys.stderr)
            return 2
        return _run_python(
            script,
            None,
            [str(script), *rest[1:], *extra],
            Path(run.ml_root),
            self.container_only_packages,
        )


def _run_python(
    script: Path | None,
    module: str | None,
    argv: list[str],
    ml_root: Path,
    container_only: Sequence[str],
) -> int:
    saved_argv, saved_path, saved_cwd = sys.argv[:], sys.path[:], Path.cwd()
    search_dir = script.parent if script is not None else ml_root
    provided = _provided_by(search_dir)
    hidden = _take_modules({*provided, *container_only})
    blocker = _ImportBlocker(frozenset(container_only) - provided)
    loader: Any = importlib.machinery.SourceFileLoader
    compile_source = loader.source_to_code
    try:
        loader.source_to_code = _source_to_code
        sys.argv = argv
        sys.path.insert(0, str(search_dir))
        sys.meta_path.insert(0, blocker)
        os.chdir(ml_root)
        if script is not None:
            runpy.run_path(str(script), run_name="__main__")
        else:
            assert module is not None
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exit_:
        if exit_.code is None:
            return 0
        if isinstance(exit_.code, int):
            return exit_.code
        print(exit_.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        loader.source_to_code = compile_source
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(blocker)
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        _take_modules({*provided, *container_only})
        for name in [n for n, m in list(sys.modules.items()) if _loaded_from(m, ml_root)]:
            del sys.modules[name]
        sys.modules.update(hidden)


class CompiledSources:
    """Job modules' bytecode, kept by the source's content for the worker's life.

    Each job imports the code bundle's ``citymodels`` from its own directory, and the
    stack's interpreters run with ``-B`` (no ``.pyc`` files), so every job compiled
    the same sources again: a fifth of a job worker's CPU at 1,000 cities. Here a
    source compiled once is reused by any job whose file holds the same bytes; its
    code objects are given the file's own path, so tracebacks and ``__file__`` name
    the job's copy. A changed bundle is new content, compiled anew.
    """

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self.compiled = 0
        self._codes: dict[tuple[bytes, int], CodeType] = {}

    def code(self, data: Any, path: Any, optimize: int = -1) -> CodeType:
        """What ``compile(data, path, "exec", optimize=optimize)`` gives, from the kept
        bytecode when the same source was compiled before."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        key = (hashlib.blake2b(raw, digest_size=20).digest(), optimize)
        code = self._codes.get(key)
        if code is None:
            if len(self._codes) >= self.limit:
                self._codes.clear()
            code = self._codes[key] = compile(
                data, path, "exec", dont_inherit=True, optimize=optimize
            )
            self.compiled += 1
        return _refiled(code, str(path))


def _refiled(code: CodeType, filename: str) -> CodeType:
    """``code`` and the code objects it holds, as compiled from ``filename``."""
    if code.co_filename == filename:
        return code
    consts = tuple(
        _refiled(const, filename) if isinstance(const, CodeType) else const
        for const in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


_COMPILED: Final = CompiledSources()
"""This worker's kept bytecode (:func:`_run_python` uses it for the jobs' imports)."""


def _source_to_code(_loader: Any, data: Any, path: Any, *, _optimize: int = -1) -> CodeType:
    """``SourceLoader.source_to_code`` during a job's run: from :data:`_COMPILED`."""
    return _COMPILED.code(data, path, _optimize)


class _ImportBlocker(importlib.abc.MetaPathFinder):
    """Makes packages the container does not have unimportable for a run."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.split(".", 1)[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _provided_by(directory: Path) -> set[str]:
    """Top-level modules and packages importable from ``directory``."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if entry.suffix == ".py":
                names.add(entry.stem)
            elif entry.is_dir() and (entry / "__init__.py").exists():
                names.add(entry.name)
    return names


def _take_modules(names: set[str]) -> dict[str, Any]:
    """Take ``names`` and their submodules out of ``sys.modules``; return them."""
    taken = {name: module for name, module in sys.modules.items() if name.split(".", 1)[0] in names}
    for name in taken:
        del sys.modules[name]
    return taken


def _loaded_from(module: Any, root: Path) -> bool:
    location = getattr(module, "__file__", None)
    if location is None:
        paths = list(getattr(module, "__path__", []) or [])
        location = paths[0] if paths else None
    return location is not None and str(location).startswith(str(root))


def run_linear_learner(run: ContainerRun) -> int:
    """Executor of the linear-learner image: the local Linear Learner.

    Follows the training-container contract
    (:func:`citymodels_devkit.linear_learner.container.run_training`).
    """
    from citymodels_devkit.linear_learner.container import run_training

    return run_training(Path(run.ml_root))


DEFAULT_EXECUTORS: Final[tuple[tuple[str, Executor], ...]] = (
    ("sklearn", PythonEntrypoint()),
    ("scikit-learn", PythonEntrypoint()),
    ("linear-learner", run_linear_learner),
)
"""Image URI substring (case-insensitive) → executor; the first match wins."""


def executor_for(image: str, executors: Sequence[tuple[str, Executor]]) -> Executor | None:
    """The executor of ``image``: the first whose substring the URI contains (any case)."""
    lowered = image.lower()
    for pattern, executor in executors:
        if pattern.lower() in lowered:
            return executor
    return None
