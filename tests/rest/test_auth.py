"""Accounts and sessions over REST, on both storage engines."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from tests.conftest import Running, User, error_code, register_and_login


async def test_register_login_me_refresh_logout(app: Running) -> None:
    async with app.client() as http:
        r = await http.post(
            "/v1/auth/register",
            json={"username": "Carol", "password": "long enough", "display_name": "C"},
        )
        assert r.status_code == 201
        created = r.json()
        assert created["username"] == "carol"
        assert created["display_name"] == "C"
        assert "password" not in r.text

        r = await http.post(
            "/v1/auth/login", json={"username": "CAROL", "password": "long enough"}
        )
        assert r.status_code == 200
        pair = r.json()
        assert pair["token_type"] == "Bearer"
        assert pair["expires_in"] == 900
        assert pair["user"]["id"] == created["id"]

    async with app.client(pair["access_token"]) as http:
        r = await http.get("/v1/me")
        assert r.status_code == 200
        assert r.json()["id"] == created["id"]

    async with app.client() as http:
        r = await http.post(
            "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert r.status_code == 200
        second = r.json()
        assert second["refresh_token"] != pair["refresh_token"]
        assert second["session_id"] == pair["session_id"]

    async with app.client(second["access_token"]) as http:
        r = await http.post("/v1/auth/logout", json={})
        assert r.status_code == 200
        assert r.json() == {"ok": True}
        # The session is over for every token of it.
        r = await http.get("/v1/me")
        assert r.status_code == 401
        assert error_code(r) == "token_revoked"
    async with app.client() as http:
        r = await http.post(
            "/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}
        )
        assert error_code(r) == "token_revoked"


async def test_access_token_claims(app: Running, alice: User) -> None:
    claims = jwt.decode(alice.access, options={"verify_signature": False})
    assert set(claims) == {"sub", "exp", "iat", "jti", "typ", "aud", "iss", "sid"}
    assert claims["typ"] == "access"
    assert claims["sub"] == alice.id
    assert claims["exp"] - claims["iat"] == 900
    assert jwt.get_unverified_header(alice.access)["alg"] == "HS256"


async def test_duplicate_username_is_409_case_insensitively(app: Running) -> None:
    await register_and_login(app, "dave")
    async with app.client() as http:
        r = await http.post(
            "/v1/auth/register", json={"username": "DAVE", "password": "whatever1"}
        )
    assert r.status_code == 409
    assert error_code(r) == "username_taken"


async def test_wrong_password_and_unknown_user_look_alike(
    app: Running, alice: User
) -> None:
    async with app.client() as http:
        wrong = await http.post(
            "/v1/auth/login", json={"username": "alice", "password": "not it at all"}
        )
        unknown = await http.post(
            "/v1/auth/login", json={"username": "nobody", "password": "not it at all"}
        )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert error_code(wrong) == "invalid_credentials"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ab", "password": "long enough"}, "username"),
        ({"username": "x" * 33, "password": "long enough"}, "username"),
        ({"username": "bad name", "password": "long enough"}, "username"),
        ({"username": "../etc", "password": "long enough"}, "username"),
        ({"username": "erin", "password": "short"}, "password"),
        ({"username": "erin", "password": "p" * 257}, "password"),
        ({"username": 42, "password": "long enough"}, "username"),
        ({"username": "erin", "password": ["long enough"]}, "password"),
        ({"password": "long enough"}, "username"),
        ({"username": "erin", "password": "long enough", "admin": True}, "admin"),
    ],
)
async def test_register_validation(app: Running, body: object, field: str) -> None:
    async with app.client() as http:
        r = await http.post("/v1/auth/register", json=body)
    assert r.status_code == 400
    assert error_code(r) == "validation_failed"
    fields = r.json()["error"]["details"]["fields"]
    assert field in {f["field"] for f in fields}
    # Validation errors never echo what was sent (it may be a password).
    assert "long enough" not in r.text


async def test_login_is_rate_limited(app: Running, alice: User) -> None:
    limit = app.settings.auth_rate_per_minute
    async with app.client() as http:
        codes = []
        for _ in range(limit + 2):
            r = await http.post(
                "/v1/auth/login", json={"username": "alice", "password": "wrong guess"}
            )
            codes.append(r.status_code)
    # alice's own login took one token from this address's bucket.
    assert codes[: limit - 1] == [401] * (limit - 1)
    assert codes[-1] == 429
    assert error_code(r) == "rate_limited"
    assert r.json()["error"]["temporary"] is True
    assert r.json()["error"]["retry_after_ms"] > 0
    assert int(r.headers["Retry-After"]) >= 1


async def test_refresh_reuse_revokes_the_family(app: Running, alice: User) -> None:
    async with app.client() as http:
        r = await http.post("/v1/auth/refresh", json={"refresh_token": alice.refresh})
        assert r.status_code == 200
        newer = r.json()

        # The first token again: someone copied it. The session ends.
        r = await http.post("/v1/auth/refresh", json={"refresh_token": alice.refresh})
        assert r.status_code == 401
        assert error_code(r) == "refresh_reused"

        r = await http.post(
            "/v1/auth/refresh", json={"refresh_token": newer["refresh_token"]}
        )
        assert error_code(r) == "token_revoked"
    async with app.client(newer["access_token"]) as http:
        r = await http.get("/v1/me")
        assert error_code(r) == "token_revoked"


async def test_other_sessions_survive_a_revoked_one(app: Running, alice: User) -> None:
    other = await register_and_login(app, "alice2")
    async with app.client() as http:
        r = await http.post(
            "/v1/auth/login", json={"username": "alice", "password": alice.password}
        )
        second_login = r.json()
        r = await http.post("/v1/auth/logout", json={"refresh_token": alice.refresh})
        assert r.status_code == 200
    async with app.client(second_login["access_token"]) as http:
        assert (await http.get("/v1/me")).status_code == 200
    async with app.client(other.access) as http:
        assert (await http.get("/v1/me")).status_code == 200


async def test_logout_someone_elses_session_is_forbidden(
    app: Running, alice: User, bob: User
) -> None:
    async with app.client(bob.access) as http:
        r = await http.post("/v1/auth/logout", json={"refresh_token": alice.refresh})
    assert r.status_code == 403
    async with app.client(alice.access) as http:
        assert (await http.get("/v1/me")).status_code == 200


async def test_logout_needs_some_token(app: Running) -> None:
    async with app.client() as http:
        r = await http.post("/v1/auth/logout", json={})
    assert r.status_code == 401
    assert error_code(r) == "auth_required"


async def test_refresh_token_is_not_an_access_token(app: Running, alice: User) -> None:
    async with app.client(alice.refresh) as http:
        r = await http.get("/v1/me")
    assert r.status_code == 401
    assert error_code(r) == "invalid_token"


async def test_access_token_is_not_a_refresh_token(app: Running, alice: User) -> None:
    async with app.client() as http:
        r = await http.post("/v1/auth/refresh", json={"refresh_token": alice.access})
    assert r.status_code == 401
    assert error_code(r) == "invalid_token"


def _resign(token: str, key: str | bytes, alg: str, **changes: object) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    return jwt.encode(claims, key, algorithm=alg)


async def test_expired_access_token(app: Running, alice: User) -> None:
    past = int(time.time()) - 3600
    token = _resign(
        alice.access, app.settings.hs_secret(), "HS256", iat=past - 900, exp=past
    )
    async with app.client(token) as http:
        r = await http.get("/v1/me")
    assert r.status_code == 401
    assert error_code(r) == "token_expired"


async def test_forged_signature(app: Running, alice: User) -> None:
    token = _resign(alice.access, "another-secret-of-sufficient-length-000", "HS256")
    async with app.client(token) as http:
        r = await http.get("/v1/me")
    assert error_code(r) == "invalid_token"


async def test_alg_none_is_refused(app: Running, alice: User) -> None:
    claims = jwt.decode(alice.access, options={"verify_signature": False})
    token = jwt.encode(claims, None, algorithm="none")
    async with app.client(token) as http:
        r = await http.get("/v1/me")
    assert error_code(r) == "invalid_token"


async def test_token_for_unknown_session_is_refused(app: Running, alice: User) -> None:
    token = _resign(
        alice.access, app.settings.hs_secret(), "HS256", sid=str(uuid.uuid4())
    )
    async with app.client(token) as http:
        r = await http.get("/v1/me")
    assert error_code(r) == "invalid_token"


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer " + "a" * 5000],
)
async def test_malformed_authorization(app: Running, header: str) -> None:
    async with app.client(headers={"Authorization": header}) as http:
        r = await http.get("/v1/me")
    assert r.status_code == 401
    assert error_code(r) == "invalid_token"


async def test_missing_authorization(app: Running) -> None:
    async with app.client() as http:
        r = await http.get("/v1/me")
    assert r.status_code == 401
    assert error_code(r) == "auth_required"


async def test_concurrent_refresh_with_one_token_issues_one_pair(
    app: Running, alice: User
) -> None:
    import asyncio

    async with app.client() as http:
        results = await asyncio.gather(
            *(
                http.post("/v1/auth/refresh", json={"refresh_token": alice.refresh})
                for _ in range(4)
            )
        )
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) <= 1
    assert all(s in (200, 401) for s in statuses)


async def test_registration_can_be_closed(
    app: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.node.settings, "registration_open", False)
    async with app.client() as http:
        r = await http.post(
            "/v1/auth/register", json={"username": "frank", "password": "long enough"}
        )
    assert r.status_code == 403
