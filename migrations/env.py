"""Alembic environment: runs migrations over the async engine of the node."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from realtime.storage.database import make_engine
from realtime.storage.models import Base

config = context.config
target_metadata = Base.metadata

#: Key of the PostgreSQL advisory lock that migrators take, so that nodes
#: started together (each running `squall migrate`) upgrade one at a time:
#: the later ones find the schema at head and do nothing.
MIGRATION_LOCK_KEY = 0x5371_A11


def _serialise(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held to the end of the transaction that runs the migrations.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        _serialise(connection)
        context.run_migrations()


async def _run_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
