"""Uploaded files: who stored what, and who may read it."""

from __future__ import annotations

import logging
import unicodedata
import uuid

from sqlalchemy import or_, select

from protocol.errors import ApiError, ErrorCode
from protocol.uploads import UploadOut
from realtime.blobs import BlobStore
from realtime.storage.database import Database
from realtime.storage.models import Attachment, Member, Message

logger = logging.getLogger(__name__)


def clean_filename(name: str | None) -> str | None:
    """A display name for Content-Disposition: no path, no control characters."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(
        ch for ch in name if unicodedata.category(ch)[0] != "C" and ch not in '"'
    )
    name = name.strip().strip(".")
    return name[:255] or None


class UploadService:
    def __init__(self, db: Database, blobs: BlobStore, public_url: str = "") -> None:
        self.db = db
        self.blobs = blobs
        self.public_url = public_url.rstrip("/")

    def url_for(self, attachment_id: uuid.UUID) -> str:
        return f"{self.public_url}/v1/uploads/{attachment_id}"

    def out(self, row: Attachment) -> UploadOut:
        return UploadOut(
            id=row.id,
            size=row.size,
            content_type=row.content_type,
            sha256=row.sha256,
            filename=row.filename,
            url=self.url_for(row.id),
            created_at=row.created_at,
        )

    async def record(
        self,
        uploader_id: uuid.UUID,
        *,
        sha256: str,
        size: int,
        content_type: str,
        filename: str | None,
    ) -> UploadOut:
        row = Attachment(
            uploader_id=uploader_id,
            sha256=sha256,
            size=size,
            content_type=content_type,
            filename=clean_filename(filename),
        )
        async with self.db.transaction() as session:
            session.add(row)
        logger.info(
            "upload stored id=%s user=%s size=%d type=%s",
            row.id,
            uploader_id,
            size,
            content_type,
        )
        return self.out(row)

    async def readable(
        self, user_id: uuid.UUID, attachment_id: uuid.UUID
    ) -> Attachment:
        """The attachment if ``user_id`` may read it: its uploader, or a member
        of the conversation of the message it is attached to. Anyone else is
        told it does not exist."""
        member_of_message = (
            select(Member.user_id)
            .join(Message, Message.conversation_id == Member.conversation_id)
            .where(Message.id == Attachment.message_id, Member.user_id == user_id)
            .exists()
        )
        async with self.db.sessions() as session:
            row = await session.scalar(
                select(Attachment).where(
                    Attachment.id == attachment_id,
                    or_(Attachment.uploader_id == user_id, member_of_message),
                )
            )
        if row is None:
            raise ApiError(ErrorCode.NOT_FOUND, "No such upload.")
        return row
