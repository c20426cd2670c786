"""The reference client's resume finishes even when the server asks it to
slow down between two pages: a throttled ``sync`` is asked again after the
delay the server gave, so the client ends holding every seq once, in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import update

from protocol.client import SquallClient
from realtime.settings import Settings
from realtime.storage.models import Conversation, ConversationEvent
from tests.conftest import TEST_SECRET, Running, register_and_login, running_node

#: More than one sync page (500 events).
EVENTS = 600


@pytest.fixture
async def stingy_node(database_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    """A node that allows one read a second, with no burst."""
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path,
        jwt_secret=TEST_SECRET,
        ws_rate_limits={"default": (50.0, 50.0), "read": (1.0, 1.0)},
    )
    async with running_node(settings) as node:
        yield node


async def test_a_resume_throttled_between_pages_asks_again(
    stingy_node: Running,
) -> None:
    node = stingy_node
    alice = await register_and_login(node, f"alice-{uuid.uuid4().hex[:6]}")
    async with node.client(alice.access) as http:
        r = await http.post(
            "/v1/rpc/conversation.create",
            json={"kind": "group", "title": "long", "member_ids": []},
        )
        assert r.status_code == 200, r.text
    conv = uuid.UUID(r.json()["id"])

    # A long history, written straight into the log.
    async with node.node.db.transaction() as session:
        session.add_all(
            ConversationEvent(
                conversation_id=conv,
                seq=seq,
                type="message.new",
                data=orjson.dumps({"n": seq}).decode(),
            )
            for seq in range(2, EVENTS + 1)
        )
        await session.execute(
            update(Conversation).where(Conversation.id == conv).values(last_seq=EVENTS)
        )

    url = node.ws_url
    client = SquallClient(url, alice.access, positions={str(conv): 0})
    seqs: list[int] = []
    try:
        await client.connect()
        async with asyncio.timeout(20):
            while not seqs or seqs[-1] < EVENTS:
                event = await client.next_event(timeout=20, match=lambda e: "seq" in e)
                seqs.append(event["seq"])
    finally:
        await client.close()
    assert seqs == list(range(1, EVENTS + 1))
