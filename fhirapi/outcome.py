"""OperationOutcome responses: the FHIR face's one way of saying no (FHIR R4 3.1.0.4)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

FHIR_JSON = "application/fhir+json"


def outcome(severity: str, code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }


def fhir_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=FHIR_JSON)


class FhirError(web.HTTPException):
    """An HTTP error whose body is an OperationOutcome."""

    def __init__(self, status: int, code: str, text: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps(outcome("error", code, text), ensure_ascii=False),
            content_type=FHIR_JSON,
        )


def refusal(
    request: web.Request, status: int, code: str, text: str, headers: Mapping[str, str]
) -> web.Response:
    """A refusal by the gateway's door (401, 403, 429) as an OperationOutcome."""
    response = fhir_response(outcome("error", code, text), status=status)
    response.headers.update(headers)
    return response
