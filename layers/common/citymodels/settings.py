"""Configuration of the Lambda functions, read once from the environment.

``template.yaml`` sets these variables (Globals for the shared ones, each function its
own); the local stack sets the same ones from the same template. Handlers read the
variables they need at import (``os.environ["X"]``), so a missing one fails at import,
not in the middle of a request; :func:`env` adds the variable's name to the error.

| variable | who | meaning |
|---|---|---|
| ``STACK_NAME`` | all | scopes job names (``cm-{stack}-...``) |
| ``DATA_BUCKET`` | all | the DataBucket |
| ``REGISTRY_TABLE`` | all | the registry table |
| ``ENDPOINT_NAME`` | publish, predict | the multi-model endpoint |
| ``RAW_PREFIX`` | onboard | where uploads land (``raw/``) |
| ``SAGEMAKER_ROLE_ARN`` | onboard, train, retry | the jobs' execution role |
| ``SKLEARN_IMAGE_URI``, ``PROCESSING_INSTANCE_TYPE`` | onboard, retry | the processing job |
| ``PROCESSING_CODE_URI`` | onboard, retry | ``s3://.../artifacts/processing/`` (preprocess.py + citymodels) |
| ``LINEAR_LEARNER_IMAGE_URI``, ``TRAINING_INSTANCE_TYPE`` | train, retry | the training job |
| ``HYPERPARAMETERS`` | train, retry | Linear Learner hyperparameters, a JSON object of strings |
| ``CAPACITY_RETRY_QUEUE_URL`` | onboard, train, retry | delayed retries after ResourceLimitExceeded |
| ``GATE_TOLERANCE`` | publish | the quality gate's tolerance (e.g. ``0.05``) |
| ``ALIAS_CACHE_SECONDS`` | predict | how long an alias lookup is reused (e.g. ``5``) |
| ``API_DEADLINE_SECONDS`` | predict | time budget for retries within the API's limit |
"""

from __future__ import annotations

import json
import os


class ConfigurationError(RuntimeError):
    """A required environment variable is missing or malformed."""


def env(name: str) -> str:
    """Return a required environment variable, or raise naming it."""
    value = os.environ.get(name)
    if value is None or value == "":
        raise ConfigurationError(f"environment variable {name} is not set (see template.yaml)")
    return value


def env_float(name: str) -> float:
    """Return a required numeric environment variable."""
    text = env(name)
    try:
        return float(text)
    except ValueError as err:
        raise ConfigurationError(f"environment variable {name}={text!r} is not a number") from err


def env_json_object(name: str) -> dict[str, str]:
    """Return a required environment variable holding a JSON object of strings."""
    text = env(name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigurationError(f"environment variable {name} is not JSON: {err.msg}") from err
    if not isinstance(value, dict):
        raise ConfigurationError(f"environment variable {name} must be a JSON object")
    return {str(k): str(v) for k, v in value.items()}
