"""``POST /v1/rpc/{method}``: every RPC method for clients without a socket.

Same params, results and errors as on the socket; only live events (and
the socket-only ``auth``) are missing.
"""

from __future__ import annotations

import math
import time

from protocol.errors import ApiError, ErrorCode
from protocol.methods import METHODS, MethodSpec
from realtime.node import Node
from realtime.rpc import Call, lookup

from .base import ApiHandler
from .spec import Operation, Route

E = ErrorCode
_ERRORS = (
    E.AUTH_REQUIRED,
    E.INVALID_TOKEN,
    E.TOKEN_EXPIRED,
    E.TOKEN_REVOKED,
    E.INVALID_JSON,
    E.VALIDATION_FAILED,
    E.FORBIDDEN,
    E.NOT_FOUND,
    E.CONFLICT,
    E.RATE_LIMITED,
)


class RpcHandler(ApiHandler):
    def initialize(self, node: Node, method: str = "") -> None:
        super().initialize(node)
        self.method_name = method

    async def post(self) -> None:
        started = time.perf_counter()
        metrics = self.node.metrics
        try:
            await self._call()
        except ApiError as exc:
            metrics.rpc_errors.labels("rest", exc.code.code).inc()
            raise
        except Exception:
            metrics.rpc_errors.labels("rest", ErrorCode.INTERNAL_ERROR.code).inc()
            raise
        finally:
            metrics.observe_rpc(self.method_name, "rest", time.perf_counter() - started)

    async def _call(self) -> None:
        principal = await self.principal()
        method = lookup(self.method_name)
        wait = self.node.rpc_limiter(method.spec.rate_class).take(
            str(principal.user_id)
        )
        if wait > 0:
            self.node.metrics.rate_limited_rpc.inc()
            raise ApiError(
                ErrorCode.RATE_LIMITED, retry_after_ms=math.ceil(wait * 1000)
            )
        params = self.parse(method.spec.params)
        result = await method.handler(Call(self.node, principal), params)
        self.reply(result)


def _route(spec: MethodSpec) -> Route:
    return Route(
        f"/v1/rpc/{spec.name}",
        RpcHandler,
        (
            Operation(
                "post",
                spec.summary,
                params=spec.params,
                result=spec.result,
                errors=_ERRORS,
                description=f"The `{spec.name}` method of the socket protocol.",
            ),
        ),
        tag="rpc",
        kwargs={"method": spec.name},
    )


ROUTES = tuple(_route(spec) for spec in METHODS.values() if not spec.socket_only)
