"""Does an upload's content match the type its client declared?

Binary formats are recognised by their magic bytes (the ``filetype``
library reads the first bytes); ``text/plain`` has no magic, so the whole
stream must decode as UTF-8 and hold no NUL byte.
"""

from __future__ import annotations

import codecs

import filetype

HEAD_BYTES = 8192

# A file that is both an audio and a video container type by its magic
# bytes; the client's choice between them is accepted.
_SAME_MAGIC = {
    "audio/mp4": {"audio/mp4", "video/mp4"},
    "video/mp4": {"audio/mp4", "video/mp4"},
    "audio/ogg": {"audio/ogg", "video/ogg"},
}


class ContentSniffer:
    """Fed the upload chunk by chunk; ``matches()`` gives the verdict."""

    def __init__(self, declared: str) -> None:
        self.declared = declared
        self._head = bytearray()
        self._text = declared == "text/plain"
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._text_ok = True

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        if self._text and self._text_ok:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self._text_ok = False
            if b"\x00" in chunk:
                self._text_ok = False

    def matches(self) -> bool:
        if self._text:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                return False
            return self._text_ok
        kind = filetype.guess(bytes(self._head))
        if kind is None:
            return False
        return kind.mime in _SAME_MAGIC.get(self.declared, {self.declared})
