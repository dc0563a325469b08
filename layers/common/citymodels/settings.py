"""Configuration of the Lambda functions, read once from the environment.

``template.yaml`` sets these variables (Globals for the shared ones, each function its
own); the local stack sets the same ones from the same template. Handlers read the
variables they need at import, so a missing one fails at import, not in the middle of a
request; :func:`env` adds the variable's name to the error. The pipeline's functions
(onboard, train, publish, retry, reconcile) read theirs through
:meth:`citymodels.pipeline.PipelineSettings.from_env`, naming their steps.

| variable | who | meaning |
|---|---|---|
| ``STACK_NAME`` | all | scopes job names (``cm-{stack}-...``) |
| ``DATA_BUCKET`` | all | the DataBucket |
| ``REGISTRY_TABLE`` | all | the registry table |
| ``ENDPOINT_NAME`` | publish, predict, reconcile | the multi-model endpoint |
| ``RAW_PREFIX`` | onboard, reconcile | where uploads land (``raw/``) |
| ``SAGEMAKER_ROLE_ARN`` | onboard, train, retry, reconcile | the jobs' execution role |
| ``SKLEARN_IMAGE_URI``, ``PROCESSING_INSTANCE_TYPE`` | onboard, retry, reconcile | the processing job |
| ``PROCESSING_CODE_URI`` | onboard, retry, reconcile | ``s3://.../artifacts/processing/`` (preprocess.py + citymodels) |
| ``LINEAR_LEARNER_IMAGE_URI``, ``TRAINING_INSTANCE_TYPE`` | train, retry, reconcile | the training job |
| ``LINEAR_LEARNER_MINI_BATCH_SIZE``, ``_EPOCHS``, ``_NUM_MODELS``, ``_LOSS`` | train, retry, reconcile | the Linear Learner hyperparameters that are choices (:data:`citymodels.pipeline.HYPERPARAMETER_VARIABLES`) |
| ``CAPACITY_RETRY_QUEUE_URL`` | onboard, train, retry, reconcile | delayed retries after ResourceLimitExceeded |
| ``GATE_TOLERANCE`` | publish, reconcile | the quality gate's tolerance (e.g. ``0.05``) |
| ``ALIAS_CACHE_SECONDS`` | predict, publish, reconcile | how long an alias lookup is reused (e.g. ``5``); a publish schedules its cut-over that far ahead |
| ``API_DEADLINE_SECONDS`` | predict | time budget for retries within the API's limit |
| ``STUCK_RUN_SECONDS`` | reconcile | a run in flight longer is examined (``StuckRunSeconds``) |
| ``FAIL_STUCK_RUN_SECONDS`` | reconcile | a run stuck longer is FAILED (``FailStuckRunSeconds``) |
| ``FAILURE_QUEUE_URL`` | reconcile | the FailureQueue it replays |
"""

from __future__ import annotations

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
