"""The delivery promise under churn, as a property: whatever the senders do
and however often the receiver's socket drops, the receiver ends up with
every acknowledged message exactly once, in seq order, with no gap."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.client import SquallClient
from tests.conftest import Running, User, register_and_login

Event = dict[str, Any]

#: One round: which senders (by index, modulo their number) send, each its
#: few messages one after another while the others do the same; and what
#: the receiver's socket does meanwhile.
ROUNDS = st.lists(
    st.tuples(
        st.sets(st.integers(0, 2), min_size=1, max_size=3),
        st.integers(1, 3),
        st.sampled_from(["stay", "reconnect_after", "reconnect_during"]),
    ),
    min_size=1,
    max_size=6,
)


@dataclass
class Crowd:
    receiver: User
    senders: list[User]


@dataclass
class Receiver:
    """The receiver's current client, and every event of the conversation
    that any of its clients yielded."""

    client: SquallClient
    channel: str
    collected: list[Event]

    def keep(self, event: Event) -> None:
        if event.get("channel") == self.channel:
            self.collected.append(event)

    def head(self) -> int:
        return max((e["seq"] for e in self.collected), default=0)


@pytest.fixture
async def crowd(app: Running) -> Crowd:
    """Registered once per test, shared by its examples (registering hashes
    a password, too slow to repeat per example)."""
    receiver = await register_and_login(app, "rita")
    senders = [await register_and_login(app, f"sam{i}") for i in range(3)]
    return Crowd(receiver, senders)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sender_count=st.integers(2, 3), rounds=ROUNDS)
async def test_receiver_gets_every_acknowledged_message_once_in_order(
    app: Running,
    crowd: Crowd,
    sender_count: int,
    rounds: list[tuple[set[int], int, str]],
) -> None:
    """Every acked message reaches the resuming receiver once, in order, no gap."""
    url = app.ws_url
    clients: list[SquallClient] = []

    async def open_client(user: User, **kwargs: Any) -> SquallClient:
        client = SquallClient(url, user.access, call_timeout_s=5, **kwargs)
        clients.append(client)
        await client.connect()
        return client

    try:
        senders = [await open_client(u) for u in crowd.senders[:sender_count]]
        first = await open_client(crowd.receiver)
        created = await senders[0].call(
            "conversation.create",
            {
                "kind": "group",
                "title": "property",
                "member_ids": [u.id for u in crowd.senders[1:sender_count]]
                + [crowd.receiver.id],
            },
        )
        receiver = Receiver(first, f"conv:{created['id']}", [])
        receiver.keep(
            await first.next_event(match=lambda e: e.get("channel") == receiver.channel)
        )
        acked: list[int] = []

        async def send(index: int, count: int) -> None:
            for n in range(count):
                sent = await senders[index].call(
                    "message.send",
                    {
                        "conversation_id": created["id"],
                        "client_msg_id": uuid.uuid4().hex,
                        "text": f"{index}:{n}",
                    },
                )
                acked.append(sent["seq"])

        async def reopen() -> None:
            old = receiver.client
            await old.close()
            async with asyncio.timeout(5):
                async for event in old.events():
                    receiver.keep(event)
            receiver.client = await open_client(crowd.receiver, positions=old.positions)

        for who, count, action in rounds:
            sends = [send(i % sender_count, count) for i in sorted(who)]
            if action == "reconnect_during":
                await asyncio.gather(reopen(), *sends)
            else:
                await asyncio.gather(*sends)
                if action == "reconnect_after":
                    await reopen()

        last = max(acked)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while receiver.head() < last:
                    receiver.keep(
                        await receiver.client.next_event(
                            match=lambda e: e.get("channel") == receiver.channel
                        )
                    )

        seqs = [e["seq"] for e in receiver.collected]
        assert seqs == list(range(1, last + 1)), seqs
        delivered = [
            e["seq"] for e in receiver.collected if e["event"] == "message.new"
        ]
        assert delivered == sorted(acked)
    finally:
        for client in clients:
            await client.close()
