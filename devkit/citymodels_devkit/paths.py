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
"""Local state (generated data, models, charts, stack outputs), relative to the cwd."""


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
