"""A socket's life: its token expiring, its peer going silent."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from protocol.client import Closed, SquallClient
from realtime.settings import Settings
from tests.conftest import TEST_SECRET, Running, register_and_login, running_node


async def test_expiring_token_warns_then_closes_4003(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before its token expires a socket is told so; at expiry it is closed
    with 4003 unless a fresh token came."""
    monkeypatch.setattr(app.node.tokens, "access_ttl_s", 3)
    monkeypatch.setattr(app.node.settings, "ws_expiry_warning_s", 2.0)
    user = await register_and_login(app, "shortlived")
    url = app.base_url.replace("http", "ws", 1) + "/v1/ws"
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
    url = app.base_url.replace("http", "ws", 1) + "/v1/ws"
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
        host, port = node.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /v1/ws HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {user.access}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert b" 101 " in status
        while (await asyncio.wait_for(reader.readline(), 5)) != b"\r\n":
            pass
        # Read frames, pings included, never answering; wait for the close.
        loop = asyncio.get_running_loop()
        started = loop.time()
        opcodes = []
        async with asyncio.timeout(5):
            while True:
                head = await reader.readexactly(2)
                size = head[1] & 0x7F
                if size == 126:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                elif size == 127:
                    size = int.from_bytes(await reader.readexactly(8), "big")
                await reader.readexactly(size)
                opcodes.append(head[0] & 0x0F)
                if opcodes[-1] == 0x8:
                    break
        assert 0x9 in opcodes  # it was pinged
        assert loop.time() - started < 3
        writer.close()
