"""``squall-chat``: a terminal chat on the reference client.

    squall-chat --user alice --with bob            # one terminal
    squall-chat --user bob --with alice            # another

Lines you type are sent to the direct conversation; what arrives is
printed with its seq. The last seq seen is kept in a state file, so a
client restarted later prints exactly what it missed, then goes live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import tornado.httpclient

from .client import RpcError, SquallClient


class Account:
    """Logs in over REST and keeps the access token fresh for reconnects."""

    def __init__(self, server: str, username: str, password: str) -> None:
        self.server = server.rstrip("/")
        self.username = username
        self.password = password
        self.http = tornado.httpclient.AsyncHTTPClient()
        self.pair: dict[str, Any] = {}
        self.fetched_at = 0.0

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        response = await self.http.fetch(
            self.server + path,
            method="POST",
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
            raise_error=False,
        )
        return response.code, json.loads(response.body or b"{}")

    async def login(self, register: bool) -> None:
        if register:
            await self._post(
                "/v1/auth/register",
                {"username": self.username, "password": self.password},
            )
        code, body = await self._post(
            "/v1/auth/login", {"username": self.username, "password": self.password}
        )
        if code != 200:
            raise SystemExit(f"login failed: {body.get('error', {}).get('message')}")
        self.pair, self.fetched_at = body, time.time()

    async def token(self) -> str:
        if time.time() - self.fetched_at > self.pair["expires_in"] - 60:
            code, body = await self._post(
                "/v1/auth/refresh", {"refresh_token": self.pair["refresh_token"]}
            )
            if code == 200:
                self.pair, self.fetched_at = body, time.time()
            else:
                await self.login(register=False)
        return str(self.pair["access_token"])


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    password = args.password or getpass.getpass(f"password for {args.user}: ")
    account = Account(args.server, args.user, password)
    await account.login(args.register)
    state_path = Path(args.state or f".squall-chat-{args.user}.json")
    positions = json.loads(state_path.read_text()) if state_path.exists() else {}

    ws_url = args.server.replace("http", "ws", 1).rstrip("/") + "/v1/ws"
    client = SquallClient(ws_url, account.token, positions=positions)
    await client.connect()
    try:
        found = await client.call("users.lookup", {"usernames": [args.with_user]})
        if not found["users"]:
            raise SystemExit(f"no user named {args.with_user}")
        peer = found["users"][0]
        conv = await client.call(
            "conversation.create", {"kind": "direct", "member_ids": [peer["id"]]}
        )
    except RpcError as exc:
        raise SystemExit(str(exc)) from exc
    names = {peer["id"]: peer["username"], account.pair["user"]["id"]: args.user}
    _print(f"chatting with {peer['username']}; type and press enter, ctrl-d quits")

    async def show() -> None:
        async for event in client.events():
            if event.get("channel") == f"conv:{conv['id']}":
                if event["event"] == "message.new":
                    data = event["data"]
                    who = names.get(data["sender_id"], data["sender_id"])
                    _print(f"[{event['seq']}] {who}: {data['text']}")
                state_path.write_text(json.dumps(client.positions))

    printer = asyncio.ensure_future(show())
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    pending = bytearray()

    def readable() -> None:
        # Read the descriptor itself: sys.stdin's own buffer would hold lines
        # back from the event loop.
        chunk = os.read(sys.stdin.fileno(), 65536)
        pending.extend(chunk)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            lines.put_nowait(line.decode(errors="replace"))
        if not chunk:
            if pending:
                lines.put_nowait(pending.decode(errors="replace"))
            lines.put_nowait(None)
            loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        while (line := await lines.get()) is not None:
            if line.strip():
                await client.call(
                    "message.send",
                    {
                        "conversation_id": conv["id"],
                        "client_msg_id": uuid.uuid4().hex,
                        "text": line,
                    },
                )
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(sys.stdin.fileno())
        state_path.write_text(json.dumps(client.positions))
        await client.close()
        printer.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="squall-chat", description=__doc__)
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", help="default: asked for")
    parser.add_argument("--with", dest="with_user", required=True, metavar="USER")
    parser.add_argument("--register", action="store_true", help="create the account")
    parser.add_argument(
        "--state", help="positions file (default .squall-chat-USER.json)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
