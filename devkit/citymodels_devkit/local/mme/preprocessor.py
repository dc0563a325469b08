"""The inference pipeline's first container: the preprocessor, loaded as its container does.

:func:`load_preprocessor` takes the preprocessor model (its ``model.tar.gz``, or a
directory of its extracted content), imports its ``code/inference.py`` (the
``SAGEMAKER_PROGRAM``) from the extracted directory and runs ``model_fn(model_dir)``
once, as the scikit-learn container does; the endpoint (:mod:`.models`) then sends
every request through the module's ``input_fn`` → ``predict_fn`` → ``output_fn``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from citymodels_devkit.archives import extract_safely
from citymodels_devkit.paths import load_container_module

__all__ = ["PreprocessorContainer", "load_preprocessor"]


@dataclass(frozen=True)
class PreprocessorContainer:
    """The pipeline's first container: its handler module and the model ``model_fn`` built."""

    module: ModuleType
    model: object
    model_dir: Path


def load_preprocessor(
    source: str | os.PathLike[str] | bytes, work_dir: Path
) -> PreprocessorContainer:
    """Load the preprocessor model as the scikit-learn container does."""
    if isinstance(source, bytes) or Path(source).is_file():
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                extract_safely(tar, work_dir)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"the preprocessor artifact is not a readable tar.gz: {err}") from None
        model_dir = work_dir
    else:
        model_dir = Path(source)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"preprocessor {model_dir} is neither a file nor a directory")
    entry_point = model_dir / "code" / "inference.py"
    module = _import_entry_point(entry_point) if entry_point.is_file() else None
    if module is None:
        module = load_container_module("inference")
    model = module.model_fn(str(model_dir))
    return PreprocessorContainer(module=module, model=model, model_dir=model_dir)


def _import_entry_point(path: Path) -> ModuleType:
    """Import the artifact's ``code/inference.py`` (its ``SAGEMAKER_PROGRAM``)."""
    # The entry point puts its own directory first on sys.path to import the shipped
    # ``citymodels``. In this process that package is already imported (the layer), so
    # it is reused, and sys.path is restored after the import: the extracted copy must
    # not shadow anything else for the rest of the process.
    importlib.import_module("citymodels")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(f"citymodels_mme_inference_{digest}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
    for name in ("model_fn", "input_fn", "predict_fn", "output_fn"):
        if not callable(getattr(module, name, None)):
            raise ImportError(f"{path} does not define {name}()")
    return module
