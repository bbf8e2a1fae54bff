"""The OpenAPI document describes the real API: event schemas, per-item answers, the error shape
and the security schemes, well-formed enough for a shop to generate a client from it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from fastapi.testclient import TestClient

from ingest.schema import EVENT_TYPES, parse_event
from tests.conftest import TEST_TOKEN, Database
from tests.factories import purchase
from tests.web.test_errors import add_probe
from web.app import create_app
from web.errors import ErrorBody
from web.openapi import EventError, EventResult, EventResults

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
EVENT_MODELS = ("PurchaseCompleted", "OrderEvent", "ConsentGranted", "ConsentRevoked")
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def client(db: Database, runtime_for) -> TestClient:
    return TestClient(create_app(runtime_for(db)))


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def refs(node: Any) -> list[str]:
    """Every ``$ref`` in a JSON tree."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def component(document: dict[str, Any], pointer: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    assert pointer.startswith(prefix), pointer
    schema: dict[str, Any] = document["components"]["schemas"][pointer.removeprefix(prefix)]
    return schema


def test_the_document_is_well_formed_openapi_3(document):
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "nps-dispatch" and document["info"]["version"]
    operation_ids = []
    for path, operations in document["paths"].items():
        assert path.startswith("/")
        for method, operation in operations.items():
            assert method in METHODS
            assert operation["responses"], (path, method)
            for status, answer in operation["responses"].items():
                assert status == "default" or 100 <= int(status) <= 599
                assert answer["description"]
            operation_ids.append(operation["operationId"])
    assert len(operation_ids) == len(set(operation_ids))  # unique, as OpenAPI requires
    # Every reference resolves inside the document.
    for pointer in refs(document):
        assert component(document, pointer)
    # Every security requirement names a declared scheme.
    schemes = document["components"]["securitySchemes"]
    for operations in document["paths"].values():
        for operation in operations.values():
            for requirement in operation.get("security", []):
                assert set(requirement) <= set(schemes)
    # The answer page is for browsers, through signed links: not part of the API.
    assert not any(path.startswith("/s/") for path in document["paths"])


def test_the_events_route_carries_the_event_schemas(document):
    schemas = document["components"]["schemas"]
    for name in (*EVENT_MODELS, "CustomerErased", "ShopEvent", "EventResult", "ErrorBody"):
        assert name in schemas
    union = schemas["ShopEvent"]
    assert union["discriminator"]["propertyName"] == "type"
    assert set(union["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert {component(document, r["$ref"])["title"] for r in union["oneOf"]} == {
        *EVENT_MODELS,
        "CustomerErased",
    }
    operation = document["paths"]["/v1/events"]["post"]
    assert operation["security"] == [{"ingestToken": []}]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    one, many = body["oneOf"]
    assert one == {"$ref": "#/components/schemas/ShopEvent"}
    assert many["type"] == "array" and many["items"] == one
    assert (many["minItems"], many["maxItems"]) == (1, 1000)
    answers = operation["responses"]
    assert set(refs(answers["200"])) == {
        "#/components/schemas/EventResult",
        "#/components/schemas/EventResults",
    }
    assert refs(answers["401"]) == ["#/components/schemas/ErrorBody"]
    assert refs(answers["409"]) == ["#/components/schemas/EventError"]
    assert "#/components/schemas/EventError" in refs(answers["422"])
    # Consent values are the state after the event, and the schema says so.
    revoke = component(document, refs(schemas["ConsentRevoked"]["properties"]["consent"])[0])
    assert {"type": "boolean", "const": False} in [
        {k: v for k, v in option.items() if k in ("type", "const")}
        for option in revoke["properties"]["email"]["anyOf"]
    ]
    # The per-item outcome is a union discriminated by its result.
    outcome = schemas["EventResult"]["properties"]["outcome"]["anyOf"][0]
    assert outcome["discriminator"]["propertyName"] == "result"
    assert {"planned", "skipped", "withdrawn", "revoked", "erased"} <= set(
        outcome["discriminator"]["mapping"]
    )
    planned = schemas["Planned"]
    assert set(planned["required"]) == {"result", "survey_state", "channel", "due_at"}
    error = schemas["ErrorDetail"]
    assert set(error["required"]) == {"code", "message", "param"}


def test_both_security_schemes_and_who_needs_which(document):
    schemes = document["components"]["securitySchemes"]
    assert (schemes["ingestToken"]["type"], schemes["ingestToken"]["scheme"]) == ("http", "bearer")
    assert schemes["operatorPassword"]["type"] == "http"
    assert schemes["operatorPassword"]["scheme"] == "basic"
    paths = document["paths"]
    operator = {"operatorPassword": []}
    assert paths["/v1/reports/nps"]["get"]["security"] == [operator]
    assert paths["/dashboard"]["get"]["security"] == [operator]
    assert operator in paths["/metrics"]["get"]["security"]
    assert "security" not in paths["/healthz"]["get"]
    assert paths["/webhooks/sendgrid/events"]["post"]["security"] == [{"sendgridSignature": []}]


def test_the_examples_of_the_schema_are_taken(client, db, document):
    examples = document["paths"]["/v1/events"]["post"]["requestBody"]["content"][
        "application/json"
    ]["examples"]
    schemas = document["components"]["schemas"]
    assert set(examples) == {*EVENT_MODELS, "CustomerErased"}
    for name, example in examples.items():
        assert example["value"] == schemas[name]["examples"][0]
    later = datetime(2026, 11, 26, tzinfo=UTC)
    order = ("PurchaseCompleted", "OrderEvent", "ConsentGranted", "ConsentRevoked")
    for name in (*order, "CustomerErased"):
        event = examples[name]["value"]
        assert type(parse_event(event, now=later)).__name__ == name
    with time_machine.travel(later, tick=False):
        for name in (*order, "CustomerErased"):
            response = client.post("/v1/events", json=examples[name]["value"], headers=AUTH)
            assert response.status_code == 200, response.text
            assert EventResult.model_validate(response.json()).status == "accepted"


def test_answers_match_their_documented_models(client, db, frozen_clock):
    accepted = client.post("/v1/events", json=purchase("D-1"), headers=AUTH)
    assert EventResult.model_validate(accepted.json()).outcome is not None
    batch = client.post("/v1/events", json=[purchase("D-2"), {"type": "x"}], headers=AUTH)
    assert [r.status for r in EventResults.model_validate(batch.json()).results] == [
        "accepted",
        "rejected",
    ]
    bad = purchase("D-3")
    del bad["total"]
    rejected = client.post("/v1/events", json=bad, headers=AUTH)
    assert EventError.model_validate(rejected.json()).errors[0].param == "total"
    refused = client.post("/v1/events", json=purchase("D-4"))
    assert ErrorBody.model_validate(refused.json()).error.code == "unauthorized"


def test_a_route_parameter_422_is_documented_in_the_error_shape(db, runtime_for):
    app = create_app(runtime_for(db))
    add_probe(app)
    document = TestClient(app).get("/openapi.json").json()
    answer = document["paths"]["/v1/probe"]["get"]["responses"]["422"]
    assert refs(answer) == ["#/components/schemas/ErrorBody"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_docs_page_serves_the_document(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/openapi.json" in page.text
