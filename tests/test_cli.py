"""The `squall` command as an operator runs it, in real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

SQUALL = [sys.executable, "-m", "realtime.cli"]


def run(
    args: list[str], env: dict[str, str], **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        SQUALL + args,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,  # type: ignore[call-overload]
    )


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
    env["SQUALL_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_help() -> None:
    out = subprocess.run(
        [*SQUALL, "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    for word in ("serve", "migrate", "user"):
        assert word in out.stdout


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    out = run(["serve", "--port", "0"], clean_env(tmp_path))
    assert out.returncode == 2
    assert "squall migrate" in out.stderr


def test_production_without_secret_fails_at_start(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    env["SQUALL_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/test"
    out = run(["serve"], env)
    assert out.returncode == 2
    assert "SQUALL_JWT_SECRET" in out.stderr


def test_migrate_create_user_serve_and_stop(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    assert run(["migrate"], env).returncode == 0
    created = run(
        ["user", "create", "operator", "--password-stdin"],
        env,
        input="a long password\n",
    )
    assert created.returncode == 0, created.stderr
    again = run(
        ["user", "create", "operator", "--password-stdin"], env, input="whatever12\n"
    )
    assert again.returncode == 1
    assert "taken" in again.stderr

    proc = subprocess.Popen(
        [*SQUALL, "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
        assert match, line
        base = match.group(1)
        deadline = time.monotonic() + 10
        while True:
            try:
                r = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.json()["status"] == "ok"
        r = httpx.post(
            f"{base}/v1/auth/login",
            json={"username": "operator", "password": "a long password"},
            timeout=10,
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
