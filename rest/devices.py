"""Push tokens of the caller's devices."""

from __future__ import annotations

from protocol.devices import DeviceList, DeviceOut, DeviceRegisterParams
from protocol.errors import ErrorCode

from .base import ApiHandler
from .spec import Operation, Route

E = ErrorCode
_AUTH = (E.AUTH_REQUIRED, E.INVALID_TOKEN, E.TOKEN_EXPIRED, E.TOKEN_REVOKED)


class DevicesHandler(ApiHandler):
    async def post(self) -> None:
        principal = await self.principal()
        params = self.parse(DeviceRegisterParams)
        device, created = await self.node.devices.register(principal.user_id, params)
        self.reply(device, status=201 if created else 200)

    async def get(self) -> None:
        principal = await self.principal()
        devices = await self.node.devices.list(principal.user_id)
        self.reply(DeviceList(devices=devices))


class DeviceHandler(ApiHandler):
    async def delete(self, device_id: str) -> None:
        principal = await self.principal()
        await self.node.devices.remove(
            principal.user_id, self.parse_id(device_id, "device id")
        )
        self.set_status(204)
        self.finish()


ROUTES = (
    Route(
        "/v1/devices",
        DevicesHandler,
        (
            Operation(
                "post",
                "Register a push token",
                description="Idempotent: the same token again updates it (200). "
                "A token registered by another user moves to the caller.",
                params=DeviceRegisterParams,
                result=DeviceOut,
                status=201,
                errors=(*_AUTH, E.INVALID_JSON, E.VALIDATION_FAILED),
            ),
            Operation(
                "get", "List the caller's devices", result=DeviceList, errors=_AUTH
            ),
        ),
        tag="devices",
    ),
    Route(
        "/v1/devices/{device_id}",
        DeviceHandler,
        (
            Operation(
                "delete",
                "Forget a device",
                status=204,
                errors=(*_AUTH, E.INVALID_ID, E.NOT_FOUND),
            ),
        ),
        tag="devices",
    ),
)
