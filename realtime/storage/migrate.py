"""Running Alembic from code, so that no ``alembic.ini`` is needed anywhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

import migrations

from .database import make_engine


class NotMigratedError(Exception):
    """The database schema is older than this code."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # Percent signs in passwords would otherwise be read as interpolation.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Blocking: call from a thread."""
    command.upgrade(alembic_config(url), revision)


async def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:

            def _read(sync_conn: Connection) -> str | None:
                return MigrationContext.configure(sync_conn).get_current_revision()

            return await conn.run_sync(_read)
    finally:
        await engine.dispose()


async def ensure_migrated(url: str) -> None:
    """Raise :class:`NotMigratedError` unless the schema is at head."""
    current = await current_revision(url)
    head = head_revision(url)
    if current != head:
        raise NotMigratedError(
            f"the database is at revision {current or 'none'} but this code needs "
            f"{head}; run `squall migrate` first (`make run` does it for you)"
        )


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)
