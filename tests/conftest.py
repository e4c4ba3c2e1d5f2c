"""Shared fixtures: the real app over HTTP, on SQLite and on PostgreSQL.

Every test that takes `service` (or `chat`, `http`) runs once per database backend.
PostgreSQL comes from HAILONG_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test):
the suite creates a scratch database there and drops it at the end. When PostgreSQL is
unreachable those runs are skipped, unless HAILONG_TEST_REQUIRE_PG=1 (CI) makes it fatal.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlmodel import SQLModel

from bot.app import Service, build_app, build_service
from bot.clock import ManualClock
from bot.config import Settings, load_settings
from storage.db import Database, run_migrations
from tests.chat import ChatClient
from tests.fakes import FakeTelegram

pytest_plugins = ["tests.rasa_fixtures"]
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("HAILONG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("HAILONG_TEST_REQUIRE_PG") == "1"
API_TOKEN = "test-token-0123456789abcdef"
# A Monday morning in Hà Nội.
T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    """A scratch PostgreSQL database for this run, migrated; None if unreachable."""
    name = f"hailong_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRE_PG:
            raise RuntimeError(f"PostgreSQL required (HAILONG_TEST_REQUIRE_PG=1): {exc}") from exc
        yield None
        return
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    run_migrations(url)
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    run_migrations(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "hailong.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_url")
    if url is None:
        pytest.skip("PostgreSQL is not reachable (set HAILONG_TEST_PG)")
    asyncio.run(_truncate_all(url))
    return url


async def _truncate_all(url: str) -> None:
    db = Database(url)
    try:
        # Everything but the fields the migration seeds, as on a freshly migrated database.
        tables = [t.name for t in SQLModel.metadata.sorted_tables if t.name != "field"]
        names = ", ".join(f'"{name}"' for name in tables)
        async with db.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await db.dispose()


def make_settings(db_url: str, **env: str) -> Settings:
    environ = {
        "HAILONG_STORAGE_URL": db_url,
        "HAILONG_API_TOKEN": API_TOKEN,
        "HAILONG_DEMO_AUTOLOAD": "false",
        # No Rasa unless a test asks for the real one (rasa_server fixture): port 9 refuses.
        "HAILONG_NLU_AUTOSTART": "false",
        "HAILONG_NLU_URL": "http://127.0.0.1:9",
        **env,
    }
    return load_settings(ROOT / "config.toml", environ)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture
async def service(settings: Settings, clock: ManualClock) -> AsyncIterator[Service]:
    """The real service (dispatcher and outbox sender running) behind a real HTTP server."""
    svc = build_service(settings, clock)
    yield svc
    await svc.sender.stop()
    await svc.dispatcher.stop()
    await svc.db.dispose()


@pytest.fixture
async def http(service: Service) -> AsyncIterator[TestClient]:
    app = build_app(service)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def chat(http: TestClient) -> AsyncIterator[ChatClient]:
    """A citizen in the web chat."""
    citizen = ChatClient(http)
    await citizen.open()
    yield citizen


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """The fake Telegram Bot API server."""
    async with FakeTelegram() as tg:
        yield tg


@pytest.fixture
async def telegram_bot(
    db_url: str, clock: ManualClock, fake_telegram: FakeTelegram
) -> AsyncIterator[tuple[Service, TestClient]]:
    """The real bot in webhook mode, Telegram pointed at the fake, a small province loaded."""
    from tests.telegram_users import start, telegram_env

    service, http = await start(db_url, clock, telegram_env(fake_telegram))
    yield service, http
    await http.close()
