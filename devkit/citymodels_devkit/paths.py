"""Where things are: the repository's container code and the local working directory."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
PREPROCESSING_DIR = REPO_ROOT / "preprocessing"
LAYER_DIR = REPO_ROOT / "layers" / "common"
WORK_DIR = Path(".citymodels")
"""Local state (generated data, models, charts, stack outputs), in the project's root:
see :func:`state_dir`."""
PROJECT_MARKERS = ("template.yaml", "pyproject.toml")
"""Files that together mark a citymodels project's root directory."""


def project_root(start: Path | None = None) -> Path | None:
    """Return the nearest directory at or above ``start`` (default: the cwd) holding
    both :data:`PROJECT_MARKERS`, or None when there is none."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if all((directory / marker).is_file() for marker in PROJECT_MARKERS):
            return directory
    return None


def state_dir(start: Path | None = None) -> Path:
    """Return the local state directory: ``.citymodels`` in the project's root.

    Found from any directory inside the project, so ``citymodels status`` run from
    ``docs/`` reaches the stack that ``citymodels local up`` started at the root. Outside
    any project it is ``.citymodels`` in ``start`` (default: the cwd). Always absolute,
    so messages say exactly where they looked.
    """
    here = (start or Path.cwd()).resolve()
    return (project_root(here) or here) / WORK_DIR


@cache
def load_container_module(name: str) -> ModuleType:
    """Import ``preprocessing/{name}.py`` (code written for the scikit-learn container).

    The devkit runs that code in-process exactly as the container runs it; it is a
    script directory, not an installed package, so it is loaded by path.
    """
    path = PREPROCESSING_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the devkit runs from a citymodels checkout")
    spec = importlib.util.spec_from_file_location(f"citymodels_container_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
