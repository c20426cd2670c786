"""The migrations build exactly the schema the models describe, on both
engines, and a node refuses a database they have not been run on."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from realtime.settings import Settings
from realtime.storage.database import make_engine
from realtime.storage.migrate import (
    NotMigratedError,
    ensure_migrated,
    upgrade_async,
)
from realtime.storage.models import Base
from tests.conftest import ENGINES, TEST_SECRET
from tests.services import scratch_postgres


@pytest.mark.parametrize("engine", ENGINES)
async def test_migrations_match_models_and_round_trip(
    engine: str, tmp_path: Path
) -> None:
    if engine == "sqlite":
        await _check(Settings(database_url=f"sqlite:///{tmp_path}/m.db").sqlalchemy_url)
        return
    async with scratch_postgres() as url:
        await _check(Settings(database_url=url, jwt_secret=TEST_SECRET).sqlalchemy_url)


async def _check(url: str) -> None:
    with pytest.raises(NotMigratedError, match="squall migrate"):
        await ensure_migrated(url)

    await upgrade_async(url)
    await ensure_migrated(url)
    assert await _diff(url) == []

    # Down to nothing and up again: the downgrade path works too.
    await upgrade_async_down(url)
    with pytest.raises(NotMigratedError):
        await ensure_migrated(url)
    await upgrade_async(url)
    assert await _diff(url) == []


async def upgrade_async_down(url: str) -> None:
    import asyncio

    from alembic import command

    from realtime.storage.migrate import alembic_config

    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")


async def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:

            def compare(sync_conn: Connection) -> list[object]:
                context = MigrationContext.configure(
                    sync_conn, opts={"compare_type": True}
                )
                return list(compare_metadata(context, Base.metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_nodes_migrating_at_once_take_turns(tmp_path: Path) -> None:
    """Several nodes started together each run `squall migrate`: one applies
    the migrations, the others wait for it and then find nothing to do."""
    async with scratch_postgres() as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
        env.update(
            SQUALL_DATABASE_URL=url,
            SQUALL_JWT_SECRET=TEST_SECRET,
            SQUALL_DATA_DIR=str(tmp_path),
        )
        squall = Path(sys.executable).parent / "squall"
        procs = [
            await asyncio.create_subprocess_exec(
                str(squall),
                "migrate",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(3)
        ]
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate() for p in procs)), 120
        )
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err.decode()[-2000:]
        sa_url = Settings(database_url=url, jwt_secret=TEST_SECRET).sqlalchemy_url
        await ensure_migrated(sa_url)
        assert await _diff(sa_url) == []
