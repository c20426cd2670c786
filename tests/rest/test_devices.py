"""Push token registration over REST."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import Running, User, error_code

FCM = {"platform": "fcm", "token": "fcm-token-0123456789", "app_id": "com.example.chat"}


async def test_register_is_idempotent(app: Running, alice: User) -> None:
    async with app.client(alice.access) as http:
        r = await http.post("/v1/devices", json=FCM)
        assert r.status_code == 201
        first = r.json()
        r = await http.post("/v1/devices", json={**FCM, "locale": "de-DE"})
        assert r.status_code == 200
        again = r.json()
        assert again["id"] == first["id"]
        assert again["locale"] == "de-DE"
        r = await http.get("/v1/devices")
        assert [d["id"] for d in r.json()["devices"]] == [first["id"]]


async def test_token_moves_to_new_user(app: Running, alice: User, bob: User) -> None:
    async with app.client(alice.access) as http:
        r = await http.post("/v1/devices", json=FCM)
        device_id = r.json()["id"]
    async with app.client(bob.access) as http:
        r = await http.post("/v1/devices", json=FCM)
        assert r.status_code == 200
        assert r.json()["id"] == device_id
        assert [d["id"] for d in (await http.get("/v1/devices")).json()["devices"]] == [
            device_id
        ]
    async with app.client(alice.access) as http:
        assert (await http.get("/v1/devices")).json()["devices"] == []


async def test_same_token_on_two_platforms_is_two_devices(
    app: Running, alice: User
) -> None:
    async with app.client(alice.access) as http:
        await http.post("/v1/devices", json=FCM)
        r = await http.post("/v1/devices", json={**FCM, "platform": "apns"})
        assert r.status_code == 201
        assert len((await http.get("/v1/devices")).json()["devices"]) == 2


async def test_delete(app: Running, alice: User, bob: User) -> None:
    async with app.client(alice.access) as http:
        device_id = (await http.post("/v1/devices", json=FCM)).json()["id"]
    async with app.client(bob.access) as http:
        # Not bob's device: as if it did not exist.
        r = await http.delete(f"/v1/devices/{device_id}")
        assert r.status_code == 404
    async with app.client(alice.access) as http:
        r = await http.delete(f"/v1/devices/{device_id}")
        assert r.status_code == 204
        r = await http.delete(f"/v1/devices/{device_id}")
        assert r.status_code == 404
        assert error_code(r) == "not_found"
        r = await http.delete(f"/v1/devices/{uuid.uuid4()}")
        assert r.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {**FCM, "platform": "sms"},
        {**FCM, "token": "short"},
        {**FCM, "token": "has spaces in it"},
        {**FCM, "token": "x" * 513},
        {**FCM, "app_id": ""},
        {**FCM, "locale": "not a locale!"},
        {**FCM, "token": 12345678},
        {"platform": "fcm"},
    ],
)
async def test_register_validation(app: Running, alice: User, body: object) -> None:
    async with app.client(alice.access) as http:
        r = await http.post("/v1/devices", json=body)
    assert r.status_code == 400
    assert error_code(r) == "validation_failed"


async def test_devices_need_auth(app: Running) -> None:
    async with app.client() as http:
        assert (await http.get("/v1/devices")).status_code == 401
        assert (await http.post("/v1/devices", json=FCM)).status_code == 401
