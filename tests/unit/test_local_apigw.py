"""The local API Gateway's own answers (401, 403, unknown routes, failures), rendered
from the template's gateway responses as API Gateway renders them."""

from __future__ import annotations

import json

from citymodels_devkit.local.apigw import render_gateway_response
from citymodels_devkit.local.template import GatewayResponse, read_gateway_response


def test_a_response_of_the_type_renders_its_status_headers_and_template() -> None:
    # GIVEN a template's UNAUTHORIZED response using API Gateway's context variables
    responses = {
        "UNAUTHORIZED": read_gateway_response(
            {
                "StatusCode": 401,
                "ResponseParameters": {"Headers": {"WWW-Authenticate": "'Bearer'"}},
                "ResponseTemplates": {
                    "application/json": '{"code": "$context.error.responseType", '
                    '"message": $context.error.messageString, "id": "$context.requestId"}'
                },
            },
            sam=True,
        )
    }
    # WHEN the authorizer refuses a key
    status, headers, body = render_gateway_response(
        responses, "UNAUTHORIZED", 401, "Unauthorized", "r-1"
    )
    # THEN the client gets the template's answer
    assert status == 401
    assert json.loads(body) == {"code": "UNAUTHORIZED", "message": "Unauthorized", "id": "r-1"}
    assert (b"www-authenticate", b"Bearer") in headers


def test_a_type_without_its_own_response_falls_back_to_the_default_4xx_then_aws_default() -> None:
    responses = {
        "DEFAULT_4XX": GatewayResponse(None, {"application/json": '{"error": "4xx"}'}, {}),
    }
    assert render_gateway_response(responses, "ACCESS_DENIED", 403, "x")[::2] == (
        403,
        b'{"error": "4xx"}',
    )
    # a 5xx does not take the 4xx default: API Gateway's own body
    status, _, body = render_gateway_response(
        responses, "DEFAULT_5XX", 502, "Internal server error"
    )
    assert (status, json.loads(body)) == (502, {"message": "Internal server error"})


def test_a_cloudformation_gateway_response_reads_its_header_parameters() -> None:
    spec = read_gateway_response(
        {
            "ResponseType": "ACCESS_DENIED",
            "StatusCode": "403",
            "ResponseParameters": {"gatewayresponse.header.X-Why": "'denied'"},
        },
        sam=False,
    )
    assert spec == GatewayResponse(403, {}, {"X-Why": "denied"})
