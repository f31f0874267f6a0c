"""``/openapi.json``: the admin and integrator API (DESIGN.md contract table), as OpenAPI 3.1.

FHIR and DICOMweb are described by their own standards (``/fhir/metadata``, PS3.18); this
document covers what is Huren's own: facility registration and checks, statistics, share
links. It is written here, beside the handlers it describes, and a test checks that every
route it names exists.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from .registry import DISTRICTS, KINDS, LEVELS

_ERROR: Final = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error", "detail"],
}
_ENDPOINT_IMAGING: Final = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "kind": {"const": "dicomweb"},
                "url": {"type": "string", "format": "uri"},
            },
            "required": ["kind", "url"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"const": "dimse"},
                "host": {"type": "string"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "ae_title": {"type": "string", "maxLength": 16},
            },
            "required": ["kind", "host", "port", "ae_title"],
            "additionalProperties": False,
        },
        {"type": "object", "properties": {"kind": {"const": "none"}}, "required": ["kind"]},
    ]
}
_ENDPOINT_LAB: Final = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"kind": {"const": "fhir"}, "url": {"type": "string", "format": "uri"}},
            "required": ["kind", "url"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"const": "hl7v2"},
                "sending_application": {"type": "string"},
                "sending_facility": {"type": "string"},
            },
            "required": ["kind", "sending_application", "sending_facility"],
            "additionalProperties": False,
        },
        {"type": "object", "properties": {"kind": {"const": "none"}}, "required": ["kind"]},
    ]
}
_FACILITY: Final = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^F\\d{3}$"},
        "name_zh": {"type": "string"},
        "name_en": {"type": "string"},
        "short_name_zh": {"type": "string"},
        "level": {"enum": list(LEVELS)},
        "kind": {"enum": list(KINDS)},
        "district": {"enum": list(DISTRICTS)},
        "alliances": {"type": "array", "items": {"type": "string", "pattern": "^A\\d{2}$"}},
        "mrn_issuer": {"type": "string"},
        "workstations": {"type": "array", "items": {"type": "string", "maxLength": 16}},
        "imaging": {"$ref": "#/components/schemas/ImagingEndpoint"},
        "lab": {"$ref": "#/components/schemas/LabEndpoint"},
        "credentials": {
            "description": "Sent, never answered: HTTP Basic or a bearer token for the "
            "facility's own systems, kept encrypted.",
            "writeOnly": True,
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "username": {"type": "string"},
                        "password": {"type": "string"},
                    },
                    "required": ["username", "password"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"bearer_token": {"type": "string"}},
                    "required": ["bearer_token"],
                    "additionalProperties": False,
                },
            ],
        },
    },
    "required": [
        "id",
        "name_zh",
        "name_en",
        "level",
        "kind",
        "district",
        "alliances",
        "mrn_issuer",
        "imaging",
        "lab",
    ],
    "additionalProperties": False,
}
_FACILITY_STATE: Final = {
    "allOf": [
        {"$ref": "#/components/schemas/Facility"},
        {
            "type": "object",
            "properties": {
                "status": {"enum": ["live", "pending", "disabled"]},
                "has_credentials": {"type": "boolean"},
                "reachable": {"type": ["boolean", "null"]},
                "breaker": {"enum": ["closed", "open", "half_open"]},
            },
        },
    ]
}
_CHECK: Final = {
    "type": "object",
    "properties": {
        "facility": {"type": "string"},
        "passed": {"type": "boolean"},
        "started": {"type": "string", "format": "date-time"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "protocol": {"enum": ["DICOMweb", "DIMSE", "FHIR", "HL7v2"]},
                    "passed": {"type": "boolean"},
                    "detail": {"type": "string"},
                    "fix": {"type": ["string", "null"]},
                    "ms": {"type": "number"},
                },
            },
        },
        "check": {"type": "string"},
        "status": {"enum": ["live", "pending", "disabled"]},
        "report_url": {"type": "string"},
    },
}


def _json(schema: dict[str, Any] | str, description: str = "OK") -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": ref}}}


_REFUSALS: Final = {
    "400": _json("Error", "Bad input: unknown fields, malformed URLs, wrong values"),
    "401": _json("Error", "No valid bearer token"),
    "403": _json("Error", "The token's role or facility may not do this"),
}
_FACILITY_ID: Final = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_RANGE: Final = [
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Huren admin and integrator API",
            "version": "2026.11",
            "description": "Facility registration and conformance checks, the statistics "
            "regulators read, and residents' share links. Every request needs a bearer "
            "token (SMART-style JWT); every change is audited.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "ImagingEndpoint": _ENDPOINT_IMAGING,
                "LabEndpoint": _ENDPOINT_LAB,
                "Facility": _FACILITY,
                "FacilityState": _FACILITY_STATE,
                "CheckReport": _CHECK,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/admin/facilities": {
                "get": {
                    "summary": "The registry, with status, reachability and breaker state",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"enum": ["live", "pending", "disabled"]},
                        }
                    ],
                    "responses": {"200": _json({"type": "object"}), **_REFUSALS},
                },
                "post": {
                    "summary": "Register a facility (integrators: their own id; admins: any). "
                    "It starts pending: federated searches ask it once its check passes.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Facility"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json("FacilityState", "Registered, pending"),
                        "409": _json("Error", "The id is taken"),
                        **_REFUSALS,
                    },
                },
            },
            "/admin/facilities/{id}": {
                "get": {
                    "summary": "One facility",
                    "parameters": _FACILITY_ID,
                    "responses": {
                        "200": _json("FacilityState"),
                        "404": _json("Error"),
                        **_REFUSALS,
                    },
                },
                "put": {
                    "summary": "Change a facility; new endpoints send it back to pending",
                    "parameters": _FACILITY_ID,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Facility"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("FacilityState"),
                        "404": _json("Error"),
                        **_REFUSALS,
                    },
                },
            },
            "/admin/facilities/{id}/disable": {
                "post": {
                    "summary": "Stop asking a facility",
                    "parameters": _FACILITY_ID,
                    "responses": {"200": _json("FacilityState"), **_REFUSALS},
                }
            },
            "/admin/facilities/{id}/check": {
                "post": {
                    "summary": "Run the conformance self-test against the facility's systems "
                    "(C-ECHO, C-FIND at each level, C-GET, QIDO/WADO-RS/rendered, FHIR "
                    "CapabilityStatement and searches, an HL7 test message and its ACK, "
                    "Chinese character sets). A pending facility that passes goes live. "
                    "Accept: text/html gives a readable report.",
                    "parameters": _FACILITY_ID,
                    "responses": {"200": _json("CheckReport"), **_REFUSALS},
                }
            },
            "/admin/facilities/{id}/go-live": {
                "post": {
                    "summary": "An admin puts a facility live without a passed check; the "
                    "reason is recorded",
                    "parameters": _FACILITY_ID,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"reason": {"type": "string"}},
                                    "required": ["reason"],
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {"200": _json("FacilityState"), **_REFUSALS},
                }
            },
            "/admin/checks/{id}": {
                "get": {
                    "summary": "A conformance check's report (format=html for the page)",
                    "parameters": _FACILITY_ID,
                    "responses": {"200": _json("CheckReport"), "404": _json("Error")},
                }
            },
            "/admin/stats/lookups": {
                "get": {
                    "summary": "Cross-institution look-ups by day, requester, holder or pair",
                    "parameters": [
                        *_RANGE,
                        {
                            "name": "group_by",
                            "in": "query",
                            "schema": {"enum": ["day", "requester", "holder", "pair", "total"]},
                        },
                        {
                            "name": "source",
                            "in": "query",
                            "schema": {"enum": ["counters", "audit"]},
                        },
                    ],
                    "responses": {"200": _json({"type": "object"}), **_REFUSALS},
                }
            },
            "/admin/stats/break-glass": {
                "get": {
                    "summary": "Break-the-glass accesses by facility and day",
                    "parameters": _RANGE,
                    "responses": {"200": _json({"type": "object"}), **_REFUSALS},
                }
            },
            "/admin/stats/recognition": {
                "get": {
                    "summary": "Recognition rate by facility and item, re-tests by reason, "
                    "re-tests avoided",
                    "parameters": [
                        *_RANGE,
                        {"name": "facility", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json({"type": "object"}), **_REFUSALS},
                }
            },
            "/admin": {
                "get": {
                    "summary": "The operations console (HTML)",
                    "responses": {"200": {"description": "The page", "content": {"text/html": {}}}},
                }
            },
            "/portal/shares": {
                "post": {
                    "summary": "A resident's share link (cloud film)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "patient": {"type": "string"},
                                        "study": {"type": "string"},
                                        "facility": {"type": "string"},
                                        "visit_date": {"type": "string", "format": "date"},
                                        "days": {"type": "number", "maximum": 365},
                                        "second_factor": {"enum": ["none", "id4", "pin"]},
                                    },
                                    "required": ["patient"],
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {"201": _json({"type": "object"}), **_REFUSALS},
                },
                "get": {
                    "summary": "A person's share links (never their tokens)",
                    "parameters": [
                        {
                            "name": "patient",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _json({"type": "object"}), **_REFUSALS},
                },
            },
            "/portal/shares/{id}": {
                "delete": {
                    "summary": "Revoke a share link, at once, in every gateway process",
                    "parameters": _FACILITY_ID,
                    "responses": {"200": _json({"type": "object"}), **_REFUSALS},
                }
            },
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())
