"""Uploads: streamed to disk, capped while streaming, typed by their bytes."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from tests.conftest import Running, User, error_code
from tests.rawhttp import stream_post

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(2000)
PDF = b"%PDF-1.7\n" + os.urandom(500)


async def upload(
    app: Running, user: User, content: bytes, content_type: str, name: str = ""
) -> dict[str, object]:
    params = {"filename": name} if name else {}
    async with app.client(user.access) as http:
        r = await http.post(
            "/v1/uploads",
            content=content,
            headers={"Content-Type": content_type},
            params=params,
        )
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


async def test_upload_and_download(app: Running, alice: User) -> None:
    body = await upload(app, alice, PNG, "image/png", "cat.png")
    assert body["size"] == len(PNG)
    assert body["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert body["content_type"] == "image/png"
    assert body["filename"] == "cat.png"
    assert body["url"] == f"/v1/uploads/{body['id']}"

    async with app.client(alice.access) as http:
        r = await http.get(str(body["url"]))
    assert r.status_code == 200
    assert r.content == PNG
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Disposition"].startswith("inline;")
    assert "sandbox" in r.headers["Content-Security-Policy"]


async def test_range_requests(app: Running, alice: User) -> None:
    body = await upload(app, alice, PDF, "application/pdf")
    url = str(body["url"])
    async with app.client(alice.access) as http:
        r = await http.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206
        assert r.content == PDF[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(PDF)}"
        r = await http.get(url, headers={"Range": "bytes=-5"})
        assert r.content == PDF[-5:]
        r = await http.get(url, headers={"Range": "bytes=500-"})
        assert r.content == PDF[500:]
        r = await http.get(url, headers={"Range": f"bytes={len(PDF)}-"})
        assert r.status_code == 416
        assert r.headers["Content-Range"] == f"bytes */{len(PDF)}"
        r = await http.get(url, headers={"Range": "bytes=0-1,5-6"})
        assert r.status_code == 200
        assert r.content == PDF
        r = await http.head(url)
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(len(PDF))
    assert r.headers["Content-Disposition"].startswith("attachment;")


async def test_same_content_is_stored_once(
    app: Running, alice: User, bob: User
) -> None:
    a = await upload(app, alice, PNG, "image/png")
    b = await upload(app, bob, PNG, "image/png")
    assert a["id"] != b["id"]
    assert a["sha256"] == b["sha256"]
    blobs = app.settings.data_dir / "blobs"
    sha = str(a["sha256"])
    assert (blobs / sha[:2] / sha[2:4] / sha).read_bytes() == PNG


async def test_others_cannot_download(app: Running, alice: User, bob: User) -> None:
    body = await upload(app, alice, PNG, "image/png")
    async with app.client(bob.access) as http:
        r = await http.get(str(body["url"]))
        assert r.status_code == 404
        assert error_code(r) == "not_found"
        r = await http.get(f"/v1/uploads/{uuid.uuid4()}")
        assert r.status_code == 404
    async with app.client() as http:
        r = await http.get(str(body["url"]))
        assert r.status_code == 401


async def test_declared_type_that_lies_is_415(app: Running, alice: User) -> None:
    async with app.client(alice.access) as http:
        r = await http.post(
            "/v1/uploads", content=PDF, headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 415
        assert error_code(r) == "content_type_mismatch"
        r = await http.post(
            "/v1/uploads",
            content=b"hello\x00world",
            headers={"Content-Type": "text/plain"},
        )
        assert error_code(r) == "content_type_mismatch"
        r = await http.post(
            "/v1/uploads",
            content=b"<html><script>alert(1)</script>",
            headers={"Content-Type": "image/jpeg"},
        )
        assert error_code(r) == "content_type_mismatch"
    _assert_no_partial_files(app.settings.data_dir)


async def test_type_not_on_the_allowlist_is_415(app: Running, alice: User) -> None:
    async with app.client(alice.access) as http:
        for ctype in ("text/html", "application/x-msdownload", "", "image/svg+xml"):
            r = await http.post(
                "/v1/uploads", content=b"<svg/>", headers={"Content-Type": ctype}
            )
            assert r.status_code == 415, ctype
            assert error_code(r) == "unsupported_media_type"
            assert "image/png" in r.json()["error"]["details"]["allowed"]


async def test_empty_upload_is_400(app: Running, alice: User) -> None:
    async with app.client(alice.access) as http:
        r = await http.post(
            "/v1/uploads", content=b"", headers={"Content-Type": "text/plain"}
        )
    assert r.status_code == 400


async def test_declared_length_over_limit_is_413_before_reading(
    app: Running, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.node.settings, "upload_max_bytes", 1000)
    async with app.client(alice.access) as http:
        r = await http.post(
            "/v1/uploads", content=PNG, headers={"Content-Type": "image/png"}
        )
    assert r.status_code == 413
    assert error_code(r) == "payload_too_large"


async def test_streamed_upload_over_limit_is_413_while_streaming(
    app: Running, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 256 * 1024
    monkeypatch.setattr(app.node.settings, "upload_max_bytes", limit)
    chunk = b"a" * 16384
    r = await stream_post(
        app.base_url,
        "/v1/uploads",
        {"Content-Type": "text/plain", "Authorization": f"Bearer {alice.access}"},
        chunk=chunk,
        count=100_000,  # 1.6 GB if the server let it all in
    )
    assert r.status == 413
    assert r.json()["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert r.bytes_sent < 64 * 1024 * 1024
    _assert_no_partial_files(app.settings.data_dir)


async def test_upload_needs_auth_before_any_byte_is_stored(app: Running) -> None:
    async with app.client() as http:
        r = await http.post(
            "/v1/uploads", content=PNG, headers={"Content-Type": "image/png"}
        )
    assert r.status_code == 401


async def test_filename_never_becomes_a_path(app: Running, alice: User) -> None:
    body = await upload(
        app, alice, b"just text\n", "text/plain", '../../etc/pass"wd\r\n'
    )
    assert body["filename"] == "passwd"
    async with app.client(alice.access) as http:
        r = await http.get(str(body["url"]))
    assert "\r" not in r.headers["Content-Disposition"]
    assert not (app.settings.data_dir.parent / "etc").exists()


async def test_unicode_filename_in_disposition(app: Running, alice: User) -> None:
    body = await upload(app, alice, b"hi\n", "text/plain", "résumé.txt")
    async with app.client(alice.access) as http:
        r = await http.get(str(body["url"]))
    disposition = r.headers["Content-Disposition"]
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.txt" in disposition


def _assert_no_partial_files(data_dir: Path) -> None:
    tmp = data_dir / "blobs" / "tmp"
    leftovers = list(tmp.iterdir()) if tmp.exists() else []
    assert leftovers == []
