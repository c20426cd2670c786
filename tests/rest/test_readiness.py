"""/readyz answers 503 while storage fails or hangs, and says so; a
hanging database does not hang the balancer's probe."""

from __future__ import annotations

import asyncio

import pytest

from rest import system
from tests.conftest import Running


async def test_ready_names_every_check(app: Running) -> None:
    async with app.client() as http:
        r = await http.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert body["checks"]["storage"] == "ok"
    assert body["checks"]["bus"] == "ok"  # a node alone: the in-process bus
    assert body["checks"]["draining"] == "no"


@pytest.mark.parametrize("failure", ["refuses", "hangs"])
async def test_storage_trouble_means_not_ready(
    app: Running, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    async def broken() -> None:
        if failure == "refuses":
            raise ConnectionRefusedError
        await asyncio.sleep(30)

    monkeypatch.setattr(app.node.db, "ping", broken)
    monkeypatch.setattr(system, "STORAGE_CHECK_TIMEOUT_S", 0.2)
    async with app.client() as http:
        r = await http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert r.json()["checks"]["storage"] == "unreachable"
