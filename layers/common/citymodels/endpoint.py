"""Calling the multi-model endpoint: InvokeEndpoint with a TargetModel, errors named.

Both the ``publish`` function (the quality gate) and the ``predict`` function call the
endpoint through :class:`EndpointClient`. The body is raw house rows as CSV (the
inference pipeline's first container encodes them); the answer is Linear Learner's
JSON, ``{"predictions": [{"score": ...}]}``.

Errors (the MME's documented ones) become domain errors:

- ``ModelNotReadyException`` (429, the model is still loading): retried with
  exponential backoff until the caller's deadline, then :class:`ModelNotReady`;
- ``ModelError`` (424, the container failed): :class:`ModelFailed` with the container's
  message;
- ``ValidationError`` (400) about the target model (e.g. its artifact does not exist):
  :class:`ModelMissing`; any other ``ValidationError``: :class:`EndpointRejected`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from citymodels.errors import CityModelsError

MAX_ROWS_PER_CALL = 1000


class EndpointError(CityModelsError):
    """Base class of endpoint errors."""

    code = "endpoint_error"


class ModelNotReady(EndpointError):
    """The model was still loading when the deadline passed (MME 429)."""

    code = "model_not_ready"
    status_code = 503


class ModelFailed(EndpointError):
    """The model's container failed on the request (MME 424 ModelError)."""

    code = "model_error"
    status_code = 424


class ModelMissing(EndpointError):
    """The endpoint has no such target model (its artifact is missing)."""

    code = "model_missing"
    status_code = 502


class EndpointRejected(EndpointError):
    """The endpoint refused the request (400 ValidationError)."""

    code = "endpoint_rejected"
    status_code = 502


def _message(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Message", ""))


class EndpointClient:
    """InvokeEndpoint on one endpoint, with backoff on ModelNotReadyException.

    Parameters
    ----------
    endpoint_name
        The endpoint (stack output ``EndpointName``).
    client
        A boto3 ``sagemaker-runtime`` client; one is created when omitted.
    sleep, clock
        Injectable for tests.
    """

    def __init__(
        self,
        endpoint_name: str,
        client: Any | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("sagemaker-runtime")
        self.endpoint_name = endpoint_name
        self._client = client
        self._sleep = sleep
        self._clock = clock

    def invoke_csv(
        self, target_model: str, body: str, *, deadline_seconds: float = 20.0
    ) -> list[float]:
        """Send CSV rows (the 8 raw features, no header) to ``target_model``; return prices.

        Raises
        ------
        ModelNotReady, ModelFailed, ModelMissing, EndpointRejected
            As described in the module docstring.
        """
        errors = self._client.exceptions
        deadline = self._clock() + deadline_seconds
        delay = 0.05
        while True:
            try:
                answer = self._client.invoke_endpoint(
                    EndpointName=self.endpoint_name,
                    TargetModel=target_model,
                    ContentType="text/csv",
                    Accept="application/json",
                    Body=body.encode("utf-8"),
                )
            except errors.ModelNotReadyException as err:
                if self._clock() + delay > deadline:
                    raise ModelNotReady(
                        f"model {target_model} is still loading; try again shortly"
                    ) from err
                self._sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except errors.ModelError as err:
                raise ModelFailed(f"model {target_model} failed: {_message(err)}") from err
            except errors.ValidationError as err:
                message = _message(err)
                lowered = message.lower()
                if "target model" in lowered or "targetmodel" in lowered or "not found" in lowered:
                    raise ModelMissing(f"model {target_model} is not available: {message}") from err
                raise EndpointRejected(message) from err
            payload = answer["Body"].read()
            return parse_predictions(payload)

    def predict_rows(
        self, target_model: str, rows: Sequence[Sequence[object]], *, deadline_seconds: float = 20.0
    ) -> list[float]:
        """Predict prices for raw feature rows, in calls of at most 1,000 rows."""
        prices: list[float] = []
        for start in range(0, len(rows), MAX_ROWS_PER_CALL):
            chunk = rows[start : start + MAX_ROWS_PER_CALL]
            body = "\n".join(",".join(str(v) for v in row) for row in chunk) + "\n"
            prices.extend(self.invoke_csv(target_model, body, deadline_seconds=deadline_seconds))
        return prices


def parse_predictions(payload: bytes) -> list[float]:
    """Parse Linear Learner's JSON answer into prices."""
    try:
        document = json.loads(payload)
        return [float(p["score"]) for p in document["predictions"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFailed(f"unexpected answer from the endpoint: {payload[:200]!r}") from err
