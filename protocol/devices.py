"""Push targets: the devices a user receives notifications on."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import Params, Result

Platform = Literal["fcm", "apns"]


class DeviceRegisterParams(Params):
    platform: Platform = Field(description="`fcm` (Android, web) or `apns` (iOS).")
    token: Annotated[
        str,
        StringConstraints(min_length=8, max_length=512, pattern=r"^[A-Za-z0-9_:.\-]+$"),
    ] = Field(description="The push token the platform gave the app.")
    app_id: Annotated[
        str,
        StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.\-]+$"),
    ] = Field(description="Bundle id or package name, e.g. `com.example.chat`.")
    locale: (
        Annotated[
            str,
            StringConstraints(
                min_length=2,
                max_length=35,
                pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$",
            ),
        ]
        | None
    ) = Field(default=None, description="BCP 47 tag for notification text.")


class DeviceOut(Result):
    id: uuid.UUID
    platform: Platform
    token: str
    app_id: str
    locale: str | None
    created_at: datetime
    last_seen_at: datetime


class DeviceList(Result):
    devices: list[DeviceOut]
