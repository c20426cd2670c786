"""Settings: the embedded default needs nothing; production needs secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from realtime.settings import JwtAlgorithm, SettingsError, load_settings


def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert not settings.production
    assert settings.sqlalchemy_url == f"sqlite+aiosqlite:///{tmp_path}/data/squall.db"
    assert settings.jwt_algorithm is JwtAlgorithm.HS256
    assert settings.upload_max_bytes == 25 * 1024 * 1024


def test_embedded_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    first = settings.hs_secret()
    path = tmp_path / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_settings(data_dir=tmp_path).hs_secret() == first


def test_short_stored_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jwt_secret").write_text("short")
    with pytest.raises(SettingsError, match="shorter than 32"):
        load_settings(data_dir=tmp_path).hs_secret()


def test_production_requires_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_DATABASE_URL", "postgresql://db/squall")
    with pytest.raises(SettingsError, match="SQUALL_JWT_SECRET is required"):
        load_settings()
    monkeypatch.setenv("SQUALL_JWT_SECRET", "too-short")
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        load_settings()
    monkeypatch.setenv("SQUALL_JWT_SECRET", "x" * 32)
    settings = load_settings()
    assert settings.production
    assert settings.sqlalchemy_url == "postgresql+asyncpg://db/squall"


def test_asymmetric_needs_key_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_JWT_ALGORITHM", "RS256")
    with pytest.raises(SettingsError, match="PRIVATE_KEY_FILE"):
        load_settings()


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_PORT", "eighty")
    with pytest.raises(SettingsError, match="SQUALL_PORT"):
        load_settings()


def test_lists_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("SQUALL_UPLOAD_ALLOWED_TYPES", "image/png")
    settings = load_settings()
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.upload_allowed_types == ["image/png"]
