"""Push targets of each user."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from protocol.devices import DeviceOut, DeviceRegisterParams
from protocol.errors import ApiError, ErrorCode
from realtime.storage.database import Database
from realtime.storage.models import Device, utcnow

logger = logging.getLogger(__name__)


def device_out(device: Device) -> DeviceOut:
    return DeviceOut.model_validate(device, from_attributes=True)


class DeviceService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def register(
        self, user_id: uuid.UUID, params: DeviceRegisterParams
    ) -> tuple[DeviceOut, bool]:
        """Register a push token; return the device and whether it is new.

        The same token registered again updates the row. A token that shows
        up for another user moves to them: a phone that changed hands must not
        keep receiving the previous owner's notifications.
        """
        try:
            return await self._upsert(user_id, params)
        except IntegrityError:
            # Two registrations of one new token raced and the other stored
            # it first; this pass finds that row and updates it.
            return await self._upsert(user_id, params)

    async def _upsert(
        self, user_id: uuid.UUID, params: DeviceRegisterParams
    ) -> tuple[DeviceOut, bool]:
        async with self.db.transaction() as session:
            device = await session.scalar(
                select(Device)
                .where(Device.platform == params.platform, Device.token == params.token)
                .with_for_update()
            )
            created = device is None
            if device is None:
                device = Device(
                    user_id=user_id, platform=params.platform, token=params.token
                )
                session.add(device)
            elif device.user_id != user_id:
                logger.info(
                    "push token moved device=%s from=%s to=%s",
                    device.id,
                    device.user_id,
                    user_id,
                )
                device.user_id = user_id
                device.created_at = utcnow()
            device.app_id = params.app_id
            device.locale = params.locale
            device.last_seen_at = utcnow()
        return device_out(device), created

    async def list(self, user_id: uuid.UUID) -> list[DeviceOut]:
        async with self.db.sessions() as session:
            rows = await session.scalars(
                select(Device)
                .where(Device.user_id == user_id)
                .order_by(Device.created_at, Device.id)
            )
            return [device_out(d) for d in rows]

    async def remove(self, user_id: uuid.UUID, device_id: uuid.UUID) -> None:
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(Device).where(Device.id == device_id, Device.user_id == user_id)
            )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise ApiError(ErrorCode.NOT_FOUND, "No such device.")
