"""Uploaded files, later attached to messages."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from .base import Result


class UploadOut(Result):
    id: uuid.UUID
    size: int = Field(description="Bytes.")
    content_type: str
    sha256: str = Field(description="Hex SHA-256 of the content.")
    filename: str | None
    url: str = Field(
        description="Where the uploader (and later, members of "
        "conversations it is attached to) can download it."
    )
    created_at: datetime
