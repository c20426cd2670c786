"""A socket's life: its token expiring, its peer going silent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protocol.client import Closed, SquallClient
from realtime.settings import Settings
from realtime.wsframe import CLOSE, PING
from tests.conftest import TEST_SECRET, Running, register_and_login, running_node
from tests.realtime.rawws import RawSocket


async def test_expiring_token_warns_then_closes_4003(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before its token expires a socket is told so; at expiry it is closed
    with 4003 unless a fresh token came."""
    monkeypatch.setattr(app.node.tokens, "access_ttl_s", 3)
    monkeypatch.setattr(app.node.settings, "ws_expiry_warning_s", 2.0)
    user = await register_and_login(app, "shortlived")
    url = app.ws_url
    client = SquallClient(url, user.access, reconnect=False)
    await client.connect()
    try:
        warning = await client.next_event(timeout=5)
        assert warning["event"] == "session.expiring"
        assert "expires_at" in warning["data"]
        with pytest.raises(Closed):
            await client.next_event(timeout=6)
        assert client.close_code == 4003
    finally:
        await client.close()


async def test_fresh_token_keeps_the_socket(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auth` with a fresh token on a live socket postpones the expiry."""
    monkeypatch.setattr(app.node.tokens, "access_ttl_s", 3)
    user = await register_and_login(app, "renewer")
    url = app.ws_url
    client = SquallClient(url, user.access, reconnect=False)
    await client.connect()
    try:
        monkeypatch.setattr(app.node.tokens, "access_ttl_s", 900)
        async with app.client() as http:
            r = await http.post(
                "/v1/auth/refresh", json={"refresh_token": user.refresh}
            )
            fresh = r.json()["access_token"]
        result = await client.call("auth", {"token": fresh})
        assert result["user_id"] == user.id
        await asyncio.sleep(4)
        assert (await client.call("ping"))["pong"] is True
    finally:
        await client.close()


async def test_silent_peer_is_closed_by_heartbeat(
    database_url: str, tmp_path: Path
) -> None:
    """A peer that never answers WebSocket pings is closed within about two
    ping intervals."""
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path,
        jwt_secret=TEST_SECRET,
        ws_ping_interval_s=0.3,
    )
    async with running_node(settings) as node:
        user = await register_and_login(node, "silent")
        conn = await RawSocket.open(node.base_url, token=user.access)
        assert conn.status == 101
        # Read frames, pings included, never answering; wait for the close.
        loop = asyncio.get_running_loop()
        started = loop.time()
        opcodes = []
        async with asyncio.timeout(5):
            while True:
                opcodes.append((await conn.frame()).opcode)
                if opcodes[-1] == CLOSE:
                    break
        assert PING in opcodes  # it was pinged
        assert loop.time() - started < 3
        await conn.aclose()
