"""Every RPC method works over `POST /v1/rpc/{method}` for clients that
hold no socket: same params, results and errors."""

from __future__ import annotations

from typing import Any

import httpx

from protocol.methods import METHODS
from tests.conftest import Running, User, error_code, register_and_login


async def rpc(http: httpx.AsyncClient, method: str, **params: Any) -> Any:
    r = await http.post(f"/v1/rpc/{method}", json=params)
    assert r.status_code == 200, (method, r.text)
    return r.json()


async def test_every_method_over_rest(app: Running, alice: User, bob: User) -> None:
    carol = await register_and_login(app, "carol")
    called: set[str] = set()
    async with app.client(alice.access) as a, app.client(bob.access) as b:

        async def call(http: httpx.AsyncClient, method: str, **params: Any) -> Any:
            called.add(method)
            return await rpc(http, method, **params)

        assert (await call(a, "ping"))["pong"] is True
        group = await call(
            a, "conversation.create", kind="group", member_ids=[bob.id], title="Team"
        )
        conv = group["id"]
        assert {m["user_id"] for m in group["members"]} == {alice.id, bob.id}
        listed = await call(b, "conversation.list")
        assert [c["id"] for c in listed["conversations"]] == [conv]
        got = await call(b, "conversation.get", conversation_id=conv)
        assert got["title"] == "Team"
        found = await call(b, "users.lookup", usernames=["ALICE", "nobody"])
        assert [u["id"] for u in found["users"]] == [alice.id]
        renamed = await call(
            a, "conversation.update", conversation_id=conv, title="Crew"
        )
        assert renamed["title"] == "Crew"
        r = await b.post(
            "/v1/rpc/conversation.update", json={"conversation_id": conv, "title": "No"}
        )
        assert error_code(r) == "forbidden"
        muted = await rpc(b, "conversation.update", conversation_id=conv, muted=True)
        assert muted["muted"] is True
        added = await call(
            a, "conversation.add_members", conversation_id=conv, user_ids=[carol.id]
        )
        assert len(added["members"]) == 3

        sent = await call(
            a, "message.send", conversation_id=conv, client_msg_id="r1", text="hi"
        )
        again = await rpc(
            a, "message.send", conversation_id=conv, client_msg_id="r1", text="hi"
        )
        assert again == sent
        edited = await call(
            a,
            "message.edit",
            conversation_id=conv,
            message_id=sent["message_id"],
            text="hey",
        )
        assert edited["seq"] > sent["seq"]
        second = await rpc(
            a, "message.send", conversation_id=conv, client_msg_id="r2", text="x"
        )
        await call(
            a, "message.delete", conversation_id=conv, message_id=second["message_id"]
        )
        history = await call(b, "message.history", conversation_id=conv)
        assert [m["text"] for m in history["messages"]] == ["hey", ""]
        assert history["messages"][1]["deleted"] is True

        assert (await call(b, "conversation.list"))["conversations"][0][
            "unread_count"
        ] == 1
        await call(b, "message.ack", conversation_id=conv, seq=sent["seq"])
        read = await call(b, "message.read", conversation_id=conv, seq=edited["seq"])
        assert read["unread_count"] == 0
        await call(b, "typing", conversation_id=conv, state="start")
        presence = await call(b, "presence.get", user_ids=[alice.id])
        assert presence["presence"][0]["online"] is False

        synced = await call(b, "sync", positions={})
        assert synced["complete"] is True
        seqs = [e["seq"] for e in synced["events"]]
        assert seqs == list(range(1, len(seqs) + 1))
        kinds = [e["event"] for e in synced["events"]]
        assert kinds[:3] == ["member.added", "conversation.updated", "member.added"]
        assert "conversation.updated" in kinds
        assert "message.deleted" in kinds
        # The deleted message's text is gone from the log too.
        assert all(e["data"].get("text") != "x" for e in synced["events"]), synced[
            "events"
        ]

        await call(
            a, "conversation.remove_member", conversation_id=conv, user_id=carol.id
        )
        await call(b, "conversation.leave", conversation_id=conv)
        r = await b.post("/v1/rpc/conversation.get", json={"conversation_id": conv})
        assert error_code(r) == "not_found"

    rest_methods = {name for name, spec in METHODS.items() if not spec.socket_only}
    assert called == rest_methods


async def test_rpc_errors(app: Running, alice: User) -> None:
    async with app.client(alice.access) as http:
        r = await http.post("/v1/rpc/auth", json={"token": "x"})
        assert r.status_code == 404
        r = await http.post("/v1/rpc/no.such", json={})
        assert r.status_code == 404
        r = await http.post("/v1/rpc/message.send", json={"conversation_id": 5})
        assert error_code(r) == "validation_failed"
        r = await http.post("/v1/rpc/message.send", content=b"{nope")
        assert error_code(r) == "invalid_json"
    async with app.client() as http:
        r = await http.post("/v1/rpc/ping", json={})
        assert error_code(r) == "auth_required"


async def test_rpc_in_openapi(app: Running) -> None:
    async with app.client() as http:
        doc = (await http.get("/openapi.json")).json()
    assert "/v1/rpc/message.send" in doc["paths"]
    assert "/v1/rpc/auth" not in doc["paths"]
