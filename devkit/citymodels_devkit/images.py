"""The two container images a stack needs, for a region, from the SageMaker SDK.

The scikit-learn image runs the processing job and the inference pipeline's first
container; the linear-learner image trains and serves the models. Their ECR
registries differ per region (and per partition), so they are looked up with the
SageMaker Python SDK's own table (``sagemaker.image_uris.retrieve``), never kept by hand.
The SDK is the optional ``sdk`` extra and is imported only here, only when asked.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

from citymodels.errors import CityModelsError

DEFAULT_SKLEARN_VERSION = "1.2-1"
"""The scikit-learn container's framework version (Python 3.9), as the template's default."""

SDK_MISSING = "install the sdk extra: pip install -e '.[sdk]'"


class ImagesError(CityModelsError, ValueError):
    """The SDK is missing, or has no image for this region or version."""

    code = "images"


@dataclass(frozen=True)
class Images:
    """The stack's image URIs for one region."""

    region: str
    sklearn_version: str
    sklearn: str
    linear_learner: str

    @property
    def parameter_overrides(self) -> str:
        """The template parameters, as ``sam deploy --parameter-overrides`` takes them."""
        return f"SklearnImageUri={self.sklearn} LinearLearnerImageUri={self.linear_learner}"

    def to_dict(self) -> dict[str, str]:
        """Return the images as a JSON-ready mapping (keys as the template's parameters)."""
        return {
            "region": self.region,
            "sklearn_version": self.sklearn_version,
            "SklearnImageUri": self.sklearn,
            "LinearLearnerImageUri": self.linear_learner,
            "sam_deploy": f"sam deploy --parameter-overrides {self.parameter_overrides}",
        }


def _image_uris_module() -> Any:
    # The SDK announces its config search on INFO and warns that v2 is deprecated on
    # import; neither is news to someone asking for two URIs.
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    for name in ("sagemaker", "sagemaker.config"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("sagemaker.image_uris")
    except ImportError as err:
        raise ImagesError(SDK_MISSING) from err


def lookup_images(region: str, sklearn_version: str = DEFAULT_SKLEARN_VERSION) -> Images:
    """Return the scikit-learn and linear-learner image URIs for ``region``.

    Parameters
    ----------
    region
        The AWS region the stack is deployed to.
    sklearn_version
        The scikit-learn framework version (``1.2-1``, ``1.4-2`` ...).

    Raises
    ------
    ImagesError
        The SDK is not installed, or it knows no such region or version (its message
        lists the supported ones).
    """
    image_uris = _image_uris_module()
    try:
        sklearn = image_uris.retrieve(
            "sklearn", region=region, version=sklearn_version, py_version="py3"
        )
        linear_learner = image_uris.retrieve("linear-learner", region=region)
    except ValueError as err:
        raise ImagesError(" ".join(str(err).split())) from err
    return Images(
        region=region,
        sklearn_version=sklearn_version,
        sklearn=str(sklearn),
        linear_learner=str(linear_learner),
    )
