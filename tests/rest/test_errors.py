"""Bad input over REST gets one error shape and loses nothing."""

from __future__ import annotations

import pytest

from tests.conftest import Running, User, error_code
from tests.rawhttp import stream_post


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{bad json", "invalid_json"),
        (b"", "validation_failed"),
        (b"[]", "validation_failed"),
        (b'"a string"', "validation_failed"),
        (b"null", "validation_failed"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b'{"username": "a", "password": "b"', "invalid_json"),
    ],
)
async def test_malformed_bodies(app: Running, body: bytes, code: str) -> None:
    async with app.client() as http:
        r = await http.post(
            "/v1/auth/login",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 400
    assert error_code(r) == code
    assert "Traceback" not in r.text


async def test_oversized_json_body_is_413(app: Running) -> None:
    big = b'{"username": "' + b"a" * (app.settings.max_json_body_bytes + 10) + b'"}'
    async with app.client() as http:
        r = await http.post("/v1/auth/login", content=big)
    assert r.status_code == 413
    assert error_code(r) == "payload_too_large"
    assert r.json()["error"]["details"]["max_bytes"] == app.settings.max_json_body_bytes


async def test_oversized_chunked_json_body_is_413_while_streaming(app: Running) -> None:
    # No Content-Length: the limit must hold while the body arrives.
    r = await stream_post(
        app.base_url,
        "/v1/auth/login",
        {"Content-Type": "application/json"},
        chunk=b"x" * 4096,
        count=10_000,
    )
    assert r.status == 413
    assert r.json()["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert r.bytes_sent < 4096 * 10_000


async def test_unknown_route_is_404(app: Running) -> None:
    async with app.client() as http:
        r = await http.get("/v1/nothing/here")
    assert r.status_code == 404
    assert error_code(r) == "not_found"


async def test_wrong_method_is_405(app: Running) -> None:
    async with app.client() as http:
        r = await http.get("/v1/auth/login")
    assert r.status_code == 405
    assert error_code(r) == "method_not_allowed"


async def test_bad_content_length_is_400(app: Running) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection(
        app.base_url.split("//")[1].split(":")[0], int(app.base_url.rsplit(":", 1)[1])
    )
    writer.write(
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 99999999999\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1", "..%2F..%2Fetc%2Fpasswd", "%00"])
async def test_malformed_ids_are_400(app: Running, alice: User, bad_id: str) -> None:
    async with app.client(alice.access) as http:
        r = await http.delete(f"/v1/devices/{bad_id}")
        assert r.status_code == 400
        assert error_code(r) == "invalid_id"
        r = await http.get(f"/v1/uploads/{bad_id}")
        assert r.status_code == 400
        assert error_code(r) == "invalid_id"


async def test_disallowed_origin_is_403(app: Running) -> None:
    async with app.client(headers={"Origin": "https://evil.example"}) as http:
        r = await http.post(
            "/v1/auth/login", json={"username": "alice", "password": "whatever"}
        )
    assert r.status_code == 403
    assert error_code(r) == "forbidden"


async def test_allowed_origin_gets_cors_headers(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.node.settings, "allowed_origins", ["https://app.example"])
    async with app.client(headers={"Origin": "https://app.example"}) as http:
        r = await http.options("/v1/auth/login")
        assert r.status_code == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]


async def test_health_ready_and_openapi(app: Running) -> None:
    async with app.client() as http:
        r = await http.get("/healthz")
        assert r.json()["status"] == "ok"
        r = await http.get("/readyz")
        assert r.status_code == 200
        assert r.json()["ready"] is True
        r = await http.get("/openapi.json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    for path in (
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/logout",
        "/v1/me",
        "/v1/devices",
        "/v1/devices/{device_id}",
        "/v1/uploads",
        "/v1/uploads/{upload_id}",
    ):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    assert "RegisterParams" in schemas
    assert "TokenPair" in schemas
    assert "ErrorResponse" in schemas
    login = doc["paths"]["/v1/auth/login"]["post"]
    assert "429" in login["responses"]
    assert "rate_limited" in login["responses"]["429"]["description"]
    # Every $ref points at a schema that exists.
    import json
    import re

    for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)):
        assert ref in schemas, ref
