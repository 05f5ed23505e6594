"""The OpenAPI document the service serves at /docs.json: BentoML's, corrected to what it really answers.

BentoML lists 200/400/404/500 with its own error body for every API. The guard answers
every error as `{"error": {"code", "kind", "message"}}` with the statuses in ROUTE_ERRORS,
so `document` rewrites each operation's responses to those, adds the verdict schemas, the
API-key security schemes when keys are on, and the per-request limits. schemathesis runs
against this document with all its checks (tests/test_service_hardening.py).
"""

from __future__ import annotations

import copy
from http import HTTPStatus

from service.routes import OPEN_PATHS, Route

# Statuses an upload route answers besides 200 (401 is added when API keys are on).
# 431 comes from below the app (service/http_limits.py) for any path, in the same format.
ROUTE_ERRORS = (400, 404, 405, 408, 413, 415, 422, 431, 500, 503, 504)
# BentoML's system routes: /readyz answers 503 until the model is loaded.
SYSTEM_ERRORS = {"/readyz": (503,)}
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")

ERROR = {
    "type": "object",
    "title": "Error",
    "description": "Every error the service answers: what went wrong and what to change.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "kind", "message"],
            "properties": {
                "code": {"type": "integer", "description": "the HTTP status, repeated"},
                "kind": {"type": "string", "description": "machine-readable reason, e.g. not_image, too_large, "
                         "truncated, too_many_pixels, missing_field, body_timeout, overloaded"},
                "message": {"type": "string", "description": "what to change, for a person"},
            },
        }
    },
}
VERDICT = {
    "type": "object",
    "title": "Verdict",
    "required": ["label", "score", "family", "family_score", "threshold", "uncertain_band", "model", "image"],
    "properties": {
        "label": {"type": "string", "enum": ["real", "uncertain", "synthetic"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1,
                  "description": "calibrated probability that the image is synthetic"},
        # OpenAPI 3.0 (BentoML's document): `nullable`, not a type list
        "family": {"type": "string", "nullable": True,
                   "description": "the generator family the picture resembles: null when the label is real or "
                                  "the model has no family head; \"unknown\" when it looks synthetic but no "
                                  "family passes the model's open-set rule (attribution.rule). Never changes the label"},
        "family_score": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True,
                         "description": "the top family's probability (also for \"unknown\"); null with family"},
        "threshold": {"type": "number"},
        "uncertain_band": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "model": {"type": "object"},
        "image": {"type": "object", "required": ["format", "width", "height", "frames"]},
    },
}
ITEM = {"title": "BatchItem", "oneOf": [{"$ref": "#/components/schemas/Verdict"},
                                       {"$ref": "#/components/schemas/Error"}]}
RESULTS = {
    "type": "object",
    "title": "BatchVerdicts",
    "required": ["results"],
    "properties": {"results": {"type": "array", "items": {"$ref": "#/components/schemas/BatchItem"},
                               "description": "one per image, in upload order; a bad image gets its own error"}},
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}


def error_response(status: int) -> dict:
    out = {"description": HTTPStatus(status).phrase,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if status == 503:
        out["headers"] = RETRY_AFTER
    return out


def document(doc: dict, routes: dict[str, Route], auth: bool, max_items: int) -> dict:
    doc = copy.deepcopy(doc)
    doc["info"]["description"] = (
        "Synthetic-image detection. POST images as multipart/form-data; every error is "
        '`{"error": {"code", "kind", "message"}}`.'
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in BENTOML_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas.update(Error=ERROR, Verdict=VERDICT, BatchItem=ITEM, BatchVerdicts=RESULTS)
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    for path, item in doc.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            ok = op["responses"].get("200", {"description": "Successful Response"})
            statuses = ROUTE_ERRORS if path in routes else SYSTEM_ERRORS.get(path, ())
            if path in routes:
                many = any(routes[path].files.values())
                _limit_items(op, routes[path], max_items)
                ok = {"description": "the verdict(s)", "content": {"application/json": {"schema": {
                    "$ref": f"#/components/schemas/{'BatchVerdicts' if many else 'Verdict'}"}}}}
            if auth and path not in OPEN_PATHS:
                statuses = (401, *statuses)
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            op["responses"] = {"200": ok, **{str(s): error_response(s) for s in sorted(statuses)}}
    return doc


def _limit_items(op: dict, route: Route, max_items: int) -> None:
    """A list-of-files field takes 1..max_items files (an empty list is a 422, more a 413)."""
    schema = op.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema", {})
    for field, many in route.files.items():
        prop = schema.get("properties", {}).get(field)
        if many and prop is not None:
            prop.update(minItems=1, maxItems=max_items)
