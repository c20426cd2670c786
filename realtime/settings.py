"""One settings model for the node, read from ``SQUALL_*`` environment variables.

With nothing set, a node runs embedded: SQLite in the data directory, the
in-process bus and broker, the log push provider, and a JWT secret made on
first start and kept in the data directory. Setting a PostgreSQL database
URL marks a production deployment, where weak or missing secrets stop the
node at start instead of being generated.
"""

from __future__ import annotations

import enum
import os
import secrets
import socket
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_HS_SECRET_BYTES = 32
SECRET_FILE_NAME = "jwt_secret"


class SettingsError(Exception):
    """Settings that cannot run a node; the message says what to change."""


class JwtAlgorithm(enum.StrEnum):
    HS256 = "HS256"
    RS256 = "RS256"
    EDDSA = "EdDSA"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of a node. Each field's description states its default."""

    model_config = SettingsConfigDict(
        env_prefix="SQUALL_", extra="ignore", validate_default=True
    )

    # Where the node lives.
    data_dir: Path = Field(
        default=Path("data"),
        description="Directory for the SQLite file, uploads and the generated "
        "JWT secret. Default `./data`.",
    )
    host: str = Field(
        default="127.0.0.1", description="Address to listen on. Default `127.0.0.1`."
    )
    port: int = Field(
        default=8000, ge=0, le=65535, description="Port to listen on. Default `8000`."
    )
    node_id: str = Field(
        default="",
        max_length=64,
        description="Name of this node in logs and metrics. Default: host name "
        "and port.",
    )
    public_url: str = Field(
        default="",
        description="Base URL clients reach this node at, used in links such as "
        "upload URLs. Default: links are relative (`/v1/...`).",
    )

    behind_proxy: bool = Field(
        default=False,
        description="Trust `X-Forwarded-For` and `X-Real-Ip` from a load "
        "balancer for client addresses. Default false.",
    )

    # Backing services.
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL. `postgresql://...` (asyncpg) marks a "
        "production deployment. Default: SQLite file `squall.db` in the data "
        "directory.",
    )
    redis_url: str = Field(
        default="",
        description="Redis URL for the bus between nodes and for cluster-wide "
        "presence. Default: none (one node alone, in-process bus).",
    )
    redis_prefix: str = Field(
        default="squall:",
        max_length=64,
        description="Prefix of every Redis channel and key, so that several "
        "clusters can share one Redis. Default `squall:`.",
    )
    presence_ttl_s: float = Field(
        default=15.0,
        ge=0.3,
        le=3600,
        description="With Redis: how long a node's users stay online after its "
        "last heartbeat. A node beats every third of this and looks for dead "
        "nodes as often, so the users of a node that died go offline within 4/3 "
        "of it; shorter costs more beats. Default 15 s.",
    )

    # Tokens.
    jwt_algorithm: JwtAlgorithm = Field(
        default=JwtAlgorithm.HS256,
        description="Signing algorithm: `HS256`, `RS256` or `EdDSA`. Default `HS256`.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 secret, at least 32 bytes. Default: generated once "
        "into the data directory (embedded mode only; required in production).",
    )
    jwt_private_key_file: Path | None = Field(
        default=None,
        description="PEM private key for RS256/EdDSA. Default: none.",
    )
    jwt_public_key_file: Path | None = Field(
        default=None,
        description="PEM public key for RS256/EdDSA. Default: none.",
    )
    jwt_key_id: str = Field(
        default="",
        max_length=128,
        description="`kid` header written on tokens and required on those "
        "verified (RS256/EdDSA). Default: none.",
    )
    jwt_issuer: str = Field(
        default="squall", description="`iss` claim. Default `squall`."
    )
    jwt_audience: str = Field(
        default="squall", description="`aud` claim. Default `squall`."
    )
    access_token_ttl_s: int = Field(
        default=15 * 60, ge=30, description="Access token lifetime. Default 900 s."
    )
    refresh_token_ttl_s: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        description="Refresh token lifetime; each use starts a new one. "
        "Default 30 days.",
    )
    jwt_leeway_s: int = Field(
        default=5, ge=0, le=300, description="Clock skew tolerated. Default 5 s."
    )

    # Accounts.
    registration_open: bool = Field(
        default=True,
        description="Whether `POST /v1/auth/register` accepts new accounts. "
        "Default true.",
    )
    auth_rate_per_minute: int = Field(
        default=10,
        ge=1,
        description="Login and register attempts per client address and per "
        "username per minute. Default 10.",
    )

    # HTTP surface.
    max_json_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest JSON request body. Default 64 KiB.",
    )
    upload_max_bytes: int = Field(
        default=25 * 1024 * 1024,
        ge=1,
        description="Largest upload, enforced while streaming. Default 25 MiB.",
    )
    upload_allowed_types: Annotated[list[str], NoDecode] = Field(
        default=[
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
            "video/mp4",
            "audio/mpeg",
            "audio/ogg",
            "audio/mp4",
            "application/pdf",
            "text/plain",
        ],
        description="Content types accepted for upload, comma separated. "
        "Default: common images, audio, mp4 video, PDF and plain text.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Browser origins allowed to call the API and open sockets, "
        "comma separated; `*` allows any. Native clients send no Origin and are "
        "always allowed. Default: none.",
    )

    # WebSocket.
    ws_auth_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Time a socket without an Authorization header has to send "
        "`auth`. Default 10 s.",
    )
    ws_ping_interval_s: float = Field(
        default=25.0,
        gt=0,
        description="WebSocket ping interval; a peer that does not answer a ping "
        "before the next one is due is closed. Default 25 s.",
    )
    ws_max_frame_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest frame a client may send; larger ones close the "
        "socket with 1009. Default 64 KiB.",
    )
    ws_outbox_max_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        description="Bytes queued for one socket before it is closed as a slow "
        "consumer (4007). Default 1 MiB.",
    )
    ws_batch_window_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="A conversation whose sockets were written to less than "
        "this long ago waits for the end of the window, and its events then go "
        "to each socket in one write; a quiet conversation is written at once. "
        "0 writes every event loop turn. Default 5 ms.",
    )
    ws_rate_limits: dict[str, tuple[float, float]] = Field(
        default={
            "default": (20.0, 40.0),
            "read": (10.0, 30.0),
            "write": (20.0, 40.0),
            "receipt": (20.0, 60.0),
            "typing": (2.0, 6.0),
        },
        description="Per-socket token buckets by method class, as JSON "
        '`{"class": [per_second, burst]}`. Classes: default, read, write, '
        "receipt, typing. Default: read 10/s burst 30, write 20/s burst 40, "
        "receipt 20/s burst 60, typing 2/s burst 6, others 20/s burst 40.",
    )
    ws_abuse_limit: int = Field(
        default=50,
        ge=1,
        description="Rate-limited requests within 10 s after which a socket is "
        "closed (4006). Default 50.",
    )
    ws_expiry_warning_s: float = Field(
        default=60.0,
        ge=0,
        description="How long before its access token expires a socket is sent "
        "`session.expiring`. Default 60 s.",
    )

    drain_s: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="On SIGTERM, the window over which the node closes its "
        "sockets with 1012 (a few at a time, so that clients come back to other "
        "nodes at that pace); running requests finish first. Default 10 s.",
    )

    # Logging.
    log_level: str = Field(default="INFO", description="Log level. Default `INFO`.")
    log_json: bool = Field(
        default=False, description="One JSON object per log line. Default false."
    )

    @field_validator("upload_allowed_types", "allowed_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        if self.jwt_algorithm is JwtAlgorithm.HS256:
            if self.production and self.jwt_secret is None:
                raise ValueError(
                    "SQUALL_JWT_SECRET is required when SQUALL_DATABASE_URL points "
                    "at PostgreSQL; set it to a random string of at least "
                    f"{MIN_HS_SECRET_BYTES} bytes"
                )
            if self.jwt_secret is not None and (
                len(self.jwt_secret.get_secret_value().encode()) < MIN_HS_SECRET_BYTES
            ):
                raise ValueError(
                    f"SQUALL_JWT_SECRET must be at least {MIN_HS_SECRET_BYTES} bytes"
                )
        else:
            if not (self.jwt_private_key_file and self.jwt_public_key_file):
                raise ValueError(
                    f"SQUALL_JWT_ALGORITHM={self.jwt_algorithm.value} needs "
                    "SQUALL_JWT_PRIVATE_KEY_FILE and SQUALL_JWT_PUBLIC_KEY_FILE"
                )
        return self

    @property
    def production(self) -> bool:
        """True when the node shares PostgreSQL with others."""
        return self.database_url.startswith(("postgresql", "postgres"))

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The database URL with the async driver each engine needs."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'squall.db').resolve()}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url

    @property
    def effective_node_id(self) -> str:
        if self.node_id:
            return self.node_id
        return f"{socket.gethostname()}:{self.port}"

    def hs_secret(self) -> bytes:
        """The HS256 secret, generating and storing one in embedded mode."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value().encode()
        return load_or_create_secret(self.data_dir / SECRET_FILE_NAME)


def load_or_create_secret(path: Path) -> bytes:
    """Read the embedded JWT secret, creating it with mode 0600 the first time."""
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48).encode()
        # O_EXCL: two nodes starting at once on one data dir must agree.
        try:
            fd = _open_exclusive(path)
        except FileExistsError:
            return load_or_create_secret(path)
        with open(fd, "wb") as fh:
            fh.write(secret + b"\n")
        return secret
    if len(secret) < MIN_HS_SECRET_BYTES:
        raise SettingsError(
            f"the JWT secret in {path} is shorter than {MIN_HS_SECRET_BYTES} bytes; "
            "delete the file to make a new one"
        )
    return secret


def _open_exclusive(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning errors into SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"SQUALL_{name.upper()}" if err["loc"] else name
            lines.append(f"{env}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from exc
