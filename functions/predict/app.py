"""The HTTP API (API Gateway REST, every route; docs/application.md "HTTP API").

Routes call one method of :class:`citymodels.api.CityApi`; domain errors become the
JSON error answers of :func:`citymodels.api.http_status`. The authorizer
(``functions/authorize``) has already checked the key; its context
(``requestContext.authorizer``) says which cities the key may see, and is checked
again here.

Metrics: ``Predictions`` (rows priced) and ``PredictionLatency`` (the endpoint call,
retries included), with the service dimension only. A ``city`` dimension would make one
billed custom metric per city and metric, a number that grows with every new city
upload; per-city figures come from the structured logs (``city``, ``model_version``,
``rows``) and the X-Ray annotation ``city`` instead, which cost nothing per city.
"""

from __future__ import annotations

import functools
import json
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels import __version__, api
from citymodels.endpoint import EndpointClient
from citymodels.errors import CityModelsError
from citymodels.registry import Registry
from citymodels.settings import env, env_float

REGISTRY_TABLE = env("REGISTRY_TABLE")
ENDPOINT_NAME = env("ENDPOINT_NAME")
ALIAS_CACHE_SECONDS = env_float("ALIAS_CACHE_SECONDS")
API_DEADLINE_SECONDS = env_float("API_DEADLINE_SECONDS")

logger = Logger()
# boto3 is the only client library here; patching only botocore keeps the X-Ray SDK from
# importing every other library it supports that happens to be installed.
tracer = Tracer(patch_modules=["botocore"])
metrics = Metrics()
# A response that does not match its declared schema is our bug: 500, not 422.
# Bodies are parsed by citymodels' own JSON reader: deep nesting, huge integers and
# repeated names are the client's mistake (400), never json.loads' RecursionError (500).
app = APIGatewayRestResolver(
    enable_validation=True,
    response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR,
    json_body_deserializer=api.parse_json,
)

# The clients are created on first use: GET /openapi.json needs neither, GET routes
# need no sagemaker-runtime client.
service = api.CityApi(
    functools.partial(Registry, REGISTRY_TABLE),
    functools.partial(EndpointClient, ENDPOINT_NAME),
    alias_cache_seconds=ALIAS_CACHE_SECONDS,
    deadline_seconds=API_DEADLINE_SECONDS,
)

CityPath = Annotated[
    str,
    # Documented, not enforced here: validate_city_id answers with a precise message.
    Path(description=api.CITY_PATH_DESCRIPTION, json_schema_extra={"pattern": api.CITY_ID_REGEX}),
]
SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}]


def _responses(ok: str, *errors: int) -> dict[int, Any]:
    """Document a route's answers: ``ok`` (schema from the return type) and its errors.

    Every route behind the authorizer may also get API Gateway's own 401 (no or unknown
    key) and 429 (throttled), whose bodies are the template's GatewayResponses, in the
    shape of ErrorBody.
    """
    descriptions = {
        400: "Bad input; `field` names it (e.g. `instances[3].SQUARE_FEET`)",
        401: "No API key, or an unknown or revoked one (answered by API Gateway)",
        429: "Too many requests; retry later (answered by API Gateway)",
        403: "The key may not do this (city outside its patterns, or not an admin key)",
        404: "Unknown city, or no model serving it",
        409: "The version was never published",
        413: "Over 1,000 rows or 6 MB",
        415: "Neither application/json nor text/csv",
        424: "The model failed on the rows",
        502: "The endpoint lacks the model the registry names",
        503: "The model is still loading; retry after `Retry-After` seconds",
    }
    error = {"application/json": {"model": api.ErrorBody}}
    answers: dict[int, Any] = {200: {"description": ok}}
    statuses = sorted({*errors, 401, 429})
    answers.update({s: {"description": descriptions[s], "content": error} for s in statuses})
    return answers


def _caller() -> api.Caller:
    return api.Caller.from_authorizer(app.current_event.request_context.authorizer.get_context())


@app.get("/openapi.json", include_in_schema=False)
def openapi_document() -> Response[str]:
    """The OpenAPI document, generated from these routes (served without a key)."""
    return Response(200, "application/json", _openapi_json())


@functools.cache
def _openapi_json() -> str:
    # Imported here: the OpenAPI models are a third of this module's import time, and only
    # this route needs them.
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Server

    document = json.loads(
        app.get_openapi_json_schema(
            title="citymodels",
            version=__version__,
            description="House prices by city, one model per city on a multi-model endpoint.",
            # Relative to this document's URL, which includes the API Gateway stage.
            servers=[Server(url=".")],
            security_schemes={"apiKey": HTTPBearer(description="Authorization: Bearer <API key>")},
        )
    )
    # Powertools documents its own validation answers (422, and 500 with its own body);
    # this API answers them with 400 and 500 in the shape of every error (ErrorBody).
    internal = {
        "description": "Internal error (never a client's mistake)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            operation["responses"]["500"] = internal
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        document["components"]["schemas"].pop(unused, None)
    return json.dumps(document)


@app.get(
    "/cities",
    summary="Cities this key may see, a page at a time",
    security=SECURITY,
    responses=_responses("A page of cities in id order, with version and metrics", 400),
)
def list_cities(
    limit: Annotated[
        int, Query(ge=1, le=api.MAX_PAGE, description="Cities per page (1-1000)")
    ] = api.DEFAULT_PAGE,
    next_token: Annotated[
        str | None,
        Query(
            alias="next",
            pattern=api.PAGE_TOKEN_PATTERN,
            description="The `next` of the previous page's answer",
        ),
    ] = None,
) -> api.CityList:
    """The cities the key's patterns grant, in id order, with version and metrics;
    `next` in the answer asks for the following page."""
    query = app.current_event.query_string_parameters or {}
    api.reject_unknown_parameters(query, api.PAGE_PARAMETERS)
    return service.list_cities(_caller(), limit=limit, next_token=next_token)


@app.get(
    "/cities/<city>",
    summary="A city's versions and uploads",
    security=SECURITY,
    responses=_responses("The city", 400, 403, 404),
)
def get_city(city: CityPath) -> api.CityDetail:
    """The city's alias, its published versions and every upload with its status."""
    tracer.put_annotation(key="city", value=city)
    return service.get_city(_caller(), city)


@app.post(
    "/cities/<city>/predictions",
    summary="Price houses with the city's current model",
    security=SECURITY,
    responses=_responses("One price per row, in order", 400, 403, 404, 413, 415, 424, 502, 503),
    # JSON (api.PredictionRequest, whose schema this is) or CSV: declared here, as a Body()
    # parameter would have Powertools refuse text/csv before the route runs.
    openapi_extensions={"requestBody": api.prediction_request_schema()},
)
def predict(city: CityPath) -> api.PredictionResponse:
    """Prices for up to 1,000 houses, in the order sent."""
    tracer.put_annotation(key="city", value=city)
    event = app.current_event
    outcome = service.predict(
        _caller(),
        city,
        api.RequestBody(
            event.body, bool(event.is_base64_encoded), event.headers.get("content-type")
        ),
        time_left_seconds=app.lambda_context.get_remaining_time_in_millis() / 1000,
    )
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=outcome.rows)
    metrics.add_metric(
        name="PredictionLatency", unit=MetricUnit.Milliseconds, value=outcome.latency_ms
    )
    logger.info(
        "priced",
        city=city,
        model_version=outcome.response.model_version,
        rows=outcome.rows,
        latency_ms=round(outcome.latency_ms, 1),
    )
    return outcome.response


@app.post(
    "/cities/<city>/rollback",
    summary="Serve an earlier published version again (admin keys)",
    security=SECURITY,
    responses=_responses("The city, serving the version", 400, 403, 404, 409, 415),
)
def rollback(city: CityPath, request: Annotated[api.RollbackRequest, Body()]) -> api.CitySummary:
    """Pin the city's alias to `version`; the next newer upload publishes as usual."""
    tracer.put_annotation(key="city", value=city)
    caller = _caller()
    summary = service.rollback(caller, city, request.version)
    logger.info("rolled back", city=city, version=request.version, key_id=caller.key_id)
    return summary


# -- errors --------------------------------------------------------------------------


def _error(status: int, code: str, message: str, field: str | None = None) -> Response[Any]:
    body = {"code": code, "message": message, **({"field": field} if field else {})}
    return Response(status, "application/json", body)


@app.exception_handler(CityModelsError)  # type: ignore[untyped-decorator]
def domain_error(err: CityModelsError) -> Response[Any]:
    status = api.http_status(err)
    if status >= 424:  # the model or the endpoint failed, not the client
        logger.warning(err.message, code=err.code, status=status)
    response = _error(status, err.code, err.message, err.field)
    response.headers.update(api.error_headers(err))
    return response


@app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
def invalid_request(err: RequestValidationError) -> Response[Any]:
    first = err.errors()[0] if err.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "path", "query")]
    field = ".".join(location) or "body"
    if first.get("type") == "json_invalid":
        return _error(400, "bad_request", "the request body is not valid JSON", "body")
    return _error(400, "bad_request", f"{field}: {first.get('msg', 'invalid value')}", field)


@app.exception_handler(RequestUnsupportedContentType)  # type: ignore[untyped-decorator]
def unsupported_content_type(err: RequestUnsupportedContentType) -> Response[Any]:
    message = "Content-Type must be application/json"
    return _error(415, "unsupported_media_type", message, "Content-Type")


@app.exception_handler(ValueError)  # type: ignore[untyped-decorator]
def unreadable_body(err: ValueError) -> Response[Any]:
    # Powertools reads form and multipart bodies itself before any route runs, and raises
    # ValueError on a malformed one (multipart without a boundary): the client's mistake.
    media_type = api.RequestBody(None, content_type=app.current_event.headers.get("content-type"))
    if media_type.media_type() != api.JSON:
        message = "Content-Type must be application/json"
        return _error(415, "unsupported_media_type", message, "Content-Type")
    logger.exception("the API failed")
    request_id = app.lambda_context.aws_request_id
    return _error(500, "internal_error", f"internal error (request {request_id})")


@app.not_found
def not_found(err: NotFoundError) -> Response[Any]:
    event = app.current_event
    return _error(404, "not_found", f"no route {event.http_method} {event.path}")


@app.exception_handler([ResponseValidationError, Exception])  # type: ignore[untyped-decorator]
def internal_error(err: Exception) -> Response[Any]:
    logger.exception("the API failed")
    request_id = app.lambda_context.aws_request_id
    return _error(500, "internal_error", f"internal error (request {request_id})")


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True
)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
