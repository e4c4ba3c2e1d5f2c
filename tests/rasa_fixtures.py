"""A real Rasa server for the test suite (registered in conftest.py as a pytest plugin).

`rasa_server` (session scope) starts Rasa through `bot.rasa.RasaServer`, the code path the
bot uses, on a free loopback port with a random token. Its model is
`nlu/models/test-<hash>.tar.gz`, the hash covering the training data, the fast pipeline,
the custom components and the Rasa lock: a fresh checkout trains it once (about 75 s on two
cores, through RasaServer's train-if-missing path), later runs reuse it.

The server lives in its own event loop in a background thread for the whole session, so it
outlives pytest-asyncio's per-test loops; tests reach it over HTTP (`.url`, `.token`) and
can run coroutines on its loop with `await handle.call(...)`.

Without a usable Rasa environment (no Python 3.10, no network for the first install) the
tests that need it are skipped, unless HAILONG_TEST_REQUIRE_RASA=1 (CI) makes that fatal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bot.config import Settings, load_settings
from bot.rasa import RasaError, RasaServer, ensure_env

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_RASA = os.environ.get("HAILONG_TEST_REQUIRE_RASA") == "1"
FAST_CONFIG = "nlu/configs/config_fast.yml"
# Setting up the venv the first time (minutes), then training (~75 s) and starting (~15 s).
ENV_TIMEOUT = 1800.0
READY_TIMEOUT = 900.0

T = TypeVar("T")


def fast_model_path() -> str:
    """nlu/models/test-<hash>.tar.gz for the current data, fast config and components."""
    nlu = ROOT / "nlu"
    files = [
        *sorted((nlu / "data").glob("*.yml")),
        nlu / "configs" / "config_fast.yml",
        *sorted((nlu / "components").glob("*.py")),
        nlu / "requirements-rasa.lock",
    ]
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return f"nlu/models/test-{h.hexdigest()[:12]}.tar.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rasa_settings(port: int, token: str, **env: str) -> Settings:
    """config.toml with the test model, the fast pipeline and this port and token."""
    return load_settings(
        ROOT / "config.toml",
        {
            "HAILONG_NLU_URL": f"http://127.0.0.1:{port}",
            "HAILONG_NLU_TOKEN": token,
            "HAILONG_NLU_MODEL": fast_model_path(),
            "HAILONG_NLU_CONFIG": FAST_CONFIG,
            **env,
        },
    )


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rasa-loop", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the thread's loop and wait for it (from synchronous code)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class RasaHandle:
    url: str
    token: str
    server: RasaServer
    settings: Settings
    # HAILONG_NLU_* overrides for make_settings(db_url, **settings_env): the bot uses this
    # server instead of starting its own.
    settings_env: dict[str, str]
    log_path: Path
    runner: LoopThread

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the server's loop, from a test's own loop."""
        return await asyncio.wrap_future(self.runner.submit(coro))

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _unavailable(reason: str) -> None:
    if REQUIRE_RASA:
        pytest.fail(f"Rasa is required (HAILONG_TEST_REQUIRE_RASA=1): {reason}", pytrace=False)
    pytest.skip(f"Rasa is not available ({reason}); set HAILONG_TEST_REQUIRE_RASA=1 to fail")


async def _started(server: RasaServer, timeout: float) -> bool:
    """Start the server and wait until it is ready, or gave up, or `timeout` passed."""
    await server.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await server.wait_ready(2.0):
            return True
        if server.error:
            return False
    return False


def _remove_stale_test_models(keep: str) -> None:
    """Test models of earlier data (and their training locks) go."""
    models = ROOT / "nlu" / "models"
    for path in [*models.glob("test-*.tar.gz"), *models.glob(".test-*.tar.gz.lock")]:
        if path.name not in (Path(keep).name, f".{Path(keep).name}.lock"):
            path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def rasa_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RasaHandle]:
    """A real Rasa server (fast model, trained on first use) for the whole session."""
    runner = LoopThread()
    server: RasaServer | None = None
    try:
        try:
            runner.run(ensure_env(), ENV_TIMEOUT)
        except (RasaError, TimeoutError) as exc:
            _unavailable(str(exc) or "setting up the Rasa environment timed out")
        # A token that starts with "-" (as a random or configured one may): it must still
        # reach Rasa as the token, not be read as an option.
        port, token = free_port(), "-" + secrets.token_hex(16)
        settings = rasa_settings(port, token)
        log_path = tmp_path_factory.mktemp("rasa") / "rasa.log"

        async def make() -> RasaServer:  # created on the loop that runs it
            return RasaServer(settings, token, log_path=log_path)

        server = runner.run(make())
        handle = RasaHandle(
            url=server.url,
            token=token,
            server=server,
            settings=settings,
            settings_env={
                "HAILONG_NLU_AUTOSTART": "false",
                "HAILONG_NLU_URL": server.url,
                "HAILONG_NLU_TOKEN": token,
            },
            log_path=log_path,
            runner=runner,
        )
        if not runner.run(_started(server, READY_TIMEOUT), READY_TIMEOUT + 30):
            pytest.fail(
                f"the Rasa server did not become ready ({server.error or 'timeout'}); "
                f"end of {log_path}:\n{handle.log_tail()}",
                pytrace=False,
            )
        _remove_stale_test_models(keep=settings.nlu.model)
        yield handle
    finally:
        pid = server.pid if server is not None else None
        if server is not None:
            runner.run(server.stop(), 60)
        runner.close()
        if pid is not None:
            with pytest.raises(ProcessLookupError):  # stop() left nothing running
                os.killpg(pid, 0)
