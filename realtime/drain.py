"""Taking a node out of a cluster without a reconnect storm or a lost reply.

On SIGTERM the node says it is not ready (``/readyz`` answers 503, so the
balancer stops sending it work), refuses new sockets, stops listening,
lets requests that are already running finish, and closes its sockets with
1012 ("server restarting, reconnect") a few at a time, spread evenly over
``SQUALL_DRAIN_S``: the clients come back to the other nodes at the pace
the window sets, not all in the same second.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realtime.node import Node

logger = logging.getLogger(__name__)

#: How long requests already running may take to finish once the sockets
#: are closed.
GRACE_S = 10.0
#: Sockets are closed in steps this far apart.
STEP_S = 0.05


async def drain(node: Node) -> None:
    """Close every socket of ``node`` over its drain window, then wait for
    running requests. The caller has stopped accepting connections."""
    node.draining = True
    window = node.settings.drain_s
    sockets = node.connections.open_sockets()
    random.shuffle(sockets)
    logger.info(
        "draining node %s: %d sockets over %.1fs", node.node_id, len(sockets), window
    )

    # Close evenly over the window: step k closes the sockets whose turn
    # has come by then.
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed = 0
    while closed < len(sockets):
        elapsed = loop.time() - started
        due = len(sockets) if window <= 0 else int(len(sockets) * elapsed / window) + 1
        for conn in sockets[closed : min(due, len(sockets))]:
            conn.close_when_idle()
        closed = min(due, len(sockets))
        if closed < len(sockets):
            await asyncio.sleep(STEP_S)

    # Requests that were running when their socket's turn came finish first;
    # then the close handshake needs a moment. Two counters owned elsewhere,
    # polled for a bounded time, rather than events threaded through both.
    deadline = loop.time() + GRACE_S
    while (node.connections or node.requests_in_flight) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(STEP_S)
    if node.connections or node.requests_in_flight:
        logger.warning(
            "drain grace over: %d sockets and %d requests still open",
            len(node.connections),
            node.requests_in_flight,
        )
    logger.info("node %s drained in %.1fs", node.node_id, loop.time() - started)
