"""``/openapi.json`` matches the implementation: a valid OpenAPI 3.1 document; every route of the aiohttp router is
documented with its path parameters and every documented operation is routed; the server accepts every documented
query parameter and refuses any other; answers validate against the documented schemas."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
import referencing
from aiohttp.test_utils import TestClient
from api_helpers import serve, write
from openapi_spec_validator import validate

from market_ingestor.api.ticker_state import MemoryTicker, TickerState
from market_ingestor.config import ApiConfig, Config, DatabaseConfig, StreamsConfig
from market_ingestor.model import IndicatorValue, Kline, Quote, Trade

pytestmark = pytest.mark.postgres

ONE = Decimal("1.0")


@pytest.fixture(scope="module")
async def client(database_url: str) -> AsyncIterator[TestClient]:
    ns = 1_709_251_260_000_000_000  # 2024-03-01T00:01:00Z
    await write(
        database_url,
        [
            Kline("binance", "BTCUSDT", "1m", ns, ns + 59_999_999_999, *[ONE] * 6, 3, ONE, ONE, "1", "3", ONE, True),
            Trade("binance", "BTCUSDT", "1", Decimal("1.5"), Decimal(2), "buy", ns, ns),
            IndicatorValue("binance", "BTCUSDT", "1m", "rsi_14", ns, {"rsi": Decimal("50.5")}),
        ],
    )
    ticker = MemoryTicker(
        {
            "binance.BTCUSDT": TickerState(
                Trade("binance", "BTCUSDT", "1", Decimal("1.5"), Decimal(2), "buy", ns, ns),
                Quote("binance", "BTCUSDT", Decimal("1.4"), ONE, Decimal("1.6"), ONE, ns, ns),
            ),
            "okx.ETHUSDT": TickerState(),  # the other instrument of the documented tickers example
        }
    )
    config = Config(
        database=DatabaseConfig(url=database_url),
        streams=StreamsConfig(indicators=["rsi_14"]),
        api=ApiConfig(auth_enabled=False),
    )
    async with serve(config, ticker) as (test_client, _):
        yield test_client


@pytest.fixture(scope="module")
async def document(client: TestClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


def router_operations(client: TestClient) -> dict[tuple[str, str], set[str]]:
    """(method, path) -> path parameter names, from the live aiohttp router."""
    found = {}
    for route in client.app.router.routes():  # type: ignore[union-attr]
        path = route.resource.canonical  # type: ignore[union-attr]
        found[(route.method.lower(), path)] = set(re.findall(r"\{(\w+)\}", path))
    return found


def documented_operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_is_documented_with_its_path_parameters_and_vice_versa(client, document):
    routed, documented = router_operations(client), documented_operations(document)
    assert set(routed) == set(documented)
    for operation, path_params in routed.items():
        params = documented[operation]["parameters"]
        assert {p["name"] for p in params if p["in"] == "path"} == path_params, operation
        assert all(p["required"] for p in params if p["in"] == "path"), operation


def schema_validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    resource = referencing.Resource.from_contents(document, default_specification=referencing.jsonschema.DRAFT202012)
    registry: referencing.Registry[Any] = referencing.Registry().with_resource("urn:openapi", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry)


def example_request(path: str, params: list[dict[str, Any]]) -> str:
    query = []
    for param in params:
        if "example" not in param:
            continue
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", param["example"])
        else:
            query.append(f"{param['name']}={param['example']}")
    return path + ("?" + "&".join(query) if query else "")


async def test_documented_examples_are_accepted_and_answers_match_their_schemas(client, document):
    for (method, path), operation in documented_operations(document).items():
        request = example_request(path, operation["parameters"])
        if method != "get":
            continue  # commands: see the next test (an accepted one would publish to the control topic)
        response = await client.get(request)
        content = operation["responses"]["200"]["content"]
        if "application/json" not in content:  # the control panel's page and files
            assert response.status == 200, request
            assert response.content_type in content, (request, response.content_type)
            assert len(await response.read()) > 100, request
            continue
        body = await response.json()
        assert response.status == 200, (request, body)
        schema = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        schema_validator(document, schema).validate(body)
        if "data" in body:
            assert body["data"], (request, body)  # the example found rows: the schema saw real items


async def test_documented_commands_take_their_body_and_refuse_a_bad_one_naming_the_field(client, document):
    commands = {key: op for key, op in documented_operations(document).items() if key[0] == "post"}
    assert {path for _, path in commands} == {"/api/v1/control/symbols", "/api/v1/control/exchanges"}
    for (_, path), operation in commands.items():
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        unknown_exchange = {"action": "add", "exchange": "nasdaq", "symbol": "BTCUSDT"}
        if body_schema == "ExchangeCommand":
            del unknown_exchange["symbol"]
        schema_validator(document, body_schema).validate(unknown_exchange)  # well-formed, but no such exchange
        response = await client.post(path, json=unknown_exchange)
        body = await response.json()
        assert (response.status, body["parameter"]) == (400, "exchange"), (path, body)
        assert "nasdaq" in body["error"] and "400" in operation["responses"]
        schema_validator(document, "Error").validate(body)


async def test_undocumented_query_parameters_are_refused_and_errors_match_their_schema(client, document):
    for (method, path), operation in documented_operations(document).items():
        if operation.get("security") == [] and not path.startswith("/api/"):
            continue  # /healthz & co.: nothing to refuse
        request = example_request(path, operation["parameters"])
        response = await client.request(method, request + ("&" if "?" in request else "?") + "undocumented=1")
        body = await response.json()
        assert (response.status, body["parameter"]) == (400, "undocumented"), request
        assert "400" in operation["responses"]
        schema_validator(document, "Error").validate(body)
