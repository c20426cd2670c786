"""Uploads streamed to the blob store, and downloads with Range support."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Any

from protocol.errors import ApiError, ErrorCode
from protocol.uploads import UploadOut
from realtime.blobs import BlobWriter
from realtime.sniff import ContentSniffer
from realtime.storage.models import Attachment

from .base import ApiHandler
from .ranges import UnsatisfiableRange, parse_range
from .spec import Operation, Route

logger = logging.getLogger(__name__)

E = ErrorCode
_AUTH = (E.AUTH_REQUIRED, E.INVALID_TOKEN, E.TOKEN_EXPIRED, E.TOKEN_REVOKED)

# Types a browser may show in place; everything else downloads.
_INLINE_PREFIXES = ("image/", "audio/", "video/")


class UploadHandler(ApiHandler):
    """``POST /v1/uploads``: the raw body is the file, ``Content-Type`` its type.

    Bytes go to a temporary blob as they arrive; the size cap, the hash and
    the magic-byte check all run on the stream, so memory use does not grow
    with the file.
    """

    _writer: BlobWriter | None = None
    _sniffer: ContentSniffer

    def body_limit(self) -> int:
        return self.node.settings.upload_max_bytes

    async def prepare(self) -> None:
        await super().prepare()
        await self.principal()
        content_type = self.request.headers.get("Content-Type", "")
        self._content_type = content_type.split(";", 1)[0].strip().lower()
        allowed = self.node.settings.upload_allowed_types
        if self._content_type not in allowed:
            raise ApiError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE, details={"allowed": allowed}
            )
        self._sniffer = ContentSniffer(self._content_type)
        self._writer = self.node.blobs.writer()

    async def data_received(self, chunk: bytes) -> None:
        if self.refusing_body(len(chunk)) or self._writer is None:
            return
        if self._writer.size + len(chunk) > self.body_limit():
            await self._discard()
            self.refuse_body(self.too_large())
            return
        self._sniffer.feed(chunk)
        await self._writer.write(chunk)

    async def post(self) -> None:
        writer = self._writer
        assert writer is not None
        if writer.size == 0:
            await self._discard()
            raise ApiError(ErrorCode.BAD_REQUEST, "The upload is empty.")
        if not self._sniffer.matches():
            await self._discard()
            raise ApiError(
                ErrorCode.CONTENT_TYPE_MISMATCH,
                f"The content is not {self._content_type}.",
            )
        sha256 = await writer.commit()
        self._writer = None
        principal = await self.principal()
        result = await self.node.uploads.record(
            principal.user_id,
            sha256=sha256,
            size=writer.size,
            content_type=self._content_type,
            filename=self.get_query_argument("filename", None),
        )
        self.set_header("Location", result.url)
        self.reply(result, status=201)

    async def _discard(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.abort()

    def on_connection_close(self) -> None:
        # The client went away mid-upload: drop the partial file.
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._abort_task = asyncio.ensure_future(writer.abort())
        super().on_connection_close()


class DownloadHandler(ApiHandler):
    """``GET /v1/uploads/{id}``: the file, to those allowed to read it."""

    async def head(self, upload_id: str) -> None:
        await self._serve(upload_id, include_body=False)

    async def get(self, upload_id: str) -> None:
        await self._serve(upload_id, include_body=True)

    async def _serve(self, upload_id: str, *, include_body: bool) -> None:
        principal = await self.principal()
        row = await self.node.uploads.readable(
            principal.user_id, self.parse_id(upload_id, "upload id")
        )
        size = await self.node.blobs.size(row.sha256)
        if size is None:
            logger.error("blob missing for upload id=%s", row.id)
            raise ApiError(ErrorCode.NOT_FOUND, "No such upload.")

        self._content_headers(row)
        self.set_header("Accept-Ranges", "bytes")
        try:
            wanted = parse_range(self.request.headers.get("Range"), size)
        except UnsatisfiableRange:
            self.error_headers["Content-Range"] = f"bytes */{size}"
            raise ApiError(ErrorCode.RANGE_NOT_SATISFIABLE) from None
        if wanted is None:
            start, end = 0, size - 1
        else:
            start, end = wanted
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.set_header("Content-Length", str(end - start + 1))
        if not include_body:
            self.finish()
            return
        async for chunk in self.node.blobs.read(row.sha256, start, end):
            self.write(chunk)
            await self.flush()
        self.finish()

    def compute_etag(self) -> str | None:
        # The content hash is the ETag; Tornado's own would hash the body.
        return None

    def _content_headers(self, row: Attachment) -> None:
        self.set_header("ETag", f'"{row.sha256}"')
        self.set_header("Content-Type", row.content_type)
        self.set_header("Cache-Control", "private, max-age=3600")
        # Served from the API's origin, so never let it run as a page.
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        disposition = (
            "inline" if row.content_type.startswith(_INLINE_PREFIXES) else "attachment"
        )
        self.set_header("Content-Disposition", content_disposition(disposition, row))


def content_disposition(kind: str, row: Attachment) -> str:
    name = row.filename or f"{row.id}"
    fallback = "".join(
        ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_" for ch in name
    )
    quoted = urllib.parse.quote(name, safe="")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"


_RAW_BODY: dict[str, Any] = {
    "required": True,
    "description": "The file's bytes. `Content-Type` must be one of the "
    "allowed types and match the bytes.",
    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
}

ROUTES = (
    Route(
        "/v1/uploads",
        UploadHandler,
        (
            Operation(
                "post",
                "Upload a file",
                description="Send the file as the raw body. Optional query "
                "`filename` is kept for Content-Disposition only.",
                result=UploadOut,
                status=201,
                request_body=_RAW_BODY,
                query=(
                    {
                        "name": "filename",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                    },
                ),
                errors=(
                    *_AUTH,
                    E.BAD_REQUEST,
                    E.PAYLOAD_TOO_LARGE,
                    E.UNSUPPORTED_MEDIA_TYPE,
                    E.CONTENT_TYPE_MISMATCH,
                ),
            ),
        ),
        tag="uploads",
    ),
    Route(
        "/v1/uploads/{upload_id}",
        DownloadHandler,
        (
            Operation(
                "get",
                "Download a file",
                description="Supports a single `Range: bytes=...`.",
                response_content={
                    "*/*": {"schema": {"type": "string", "format": "binary"}}
                },
                errors=(*_AUTH, E.INVALID_ID, E.NOT_FOUND, E.RANGE_NOT_SATISFIABLE),
            ),
        ),
        tag="uploads",
    ),
)
