"""The Rasa process as the bot runs it: a real `rasa run`, its token, restarts, stop.

The session server comes from tests/rasa_fixtures.py (skipped without a Rasa environment
unless HAILONG_TEST_REQUIRE_RASA=1); one test starts its own server to kill it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bot import rasa
from bot.rasa import RasaEnvError, RasaServer, data_intents, write_domain
from tests.rasa_fixtures import RasaHandle, free_port, rasa_settings

ROOT = Path(__file__).resolve().parent.parent
LAND_TEXT = (
    "Tôi nộp hồ sơ cấp giấy chứng nhận quyền sử dụng đất cho thửa đất của gia đình "
    "đã hai tháng mà văn phòng đăng ký đất đai vẫn chưa trả sổ đỏ"
)


async def parse(url: str, token: str | None, text: str) -> tuple[int, Any]:
    params = {"token": token} if token is not None else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(f"{url}/model/parse", params=params, json={"text": text}) as resp,
    ):
        body = await resp.json(content_type=None) if resp.status == 200 else None
        return resp.status, body


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
async def test_server_classifies_a_land_complaint(rasa_server: RasaHandle) -> None:
    status, body = await parse(rasa_server.url, rasa_server.token, LAND_TEXT)
    assert status == 200
    assert body["intent"]["name"].startswith("land+"), body["intent"]
    # Every intent is ranked (field confidence = sum over its labels).
    names = {r["name"] for r in body["intent_ranking"]}
    assert {"land+procedure", "land+conduct", "other+conduct", "greet"} <= names


@pytest.mark.slow
async def test_server_refuses_a_wrong_or_missing_token(rasa_server: RasaHandle) -> None:
    for token in (None, "", "wrong-" + rasa_server.token):
        status, _ = await parse(rasa_server.url, token, LAND_TEXT)
        assert status in (401, 403), (token, status)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{rasa_server.url}/status", params={"token": "nope"}) as resp,
    ):
        assert resp.status in (401, 403)


@pytest.mark.slow
async def test_killed_server_is_restarted(rasa_server: RasaHandle) -> None:
    server = rasa_server.server  # runs on the fixture's loop: awaited through .call()
    first, restarts = server.pid, server.restarts
    assert first is not None and server.is_ready
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    for _ in range(100):  # 10 s
        if not server.is_ready:
            break
        await asyncio.sleep(0.1)
    assert not server.is_ready, "the supervisor did not notice the dead server"
    assert await rasa_server.call(server.wait_ready(180)), rasa_server.log_tail()
    print(f"restarted and ready again in {time.monotonic() - killed_at:.1f} s")
    assert server.pid not in (None, first)
    assert server.restarts == restarts + 1
    status, body = await parse(rasa_server.url, rasa_server.token, LAND_TEXT)
    assert status == 200 and body["intent"]["name"].startswith("land+")


@pytest.mark.slow
async def test_stop_leaves_no_process(rasa_server: RasaHandle, tmp_path: Path) -> None:
    """Stopped while it loads its model (the fixture's teardown stops a ready one)."""
    token = "own-token-0123456789"
    server = RasaServer(rasa_settings(free_port(), token), token, log_path=tmp_path / "rasa.log")
    await server.start()
    try:
        for _ in range(300):  # 30 s: the venv and the model exist already
            if server.pid is not None:
                break
            await asyncio.sleep(0.1)
        pid = server.pid
        assert pid is not None, server.error
        await asyncio.sleep(3)  # well into loading TensorFlow and the model
    finally:
        started = time.monotonic()
        await server.stop()
    print(f"stopped in {time.monotonic() - started:.1f} s")
    assert server.pid is None and not server.is_ready
    assert gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing left of its process group either
    status, _ = await parse(rasa_server.url, rasa_server.token, LAND_TEXT)
    assert status == 200  # the session server was not touched


def test_nlu_train_with_a_missing_config_fails_clearly() -> None:
    r = subprocess.run(
        [sys.executable, "bot.py", "nlu", "train", "--config", "does-not-exist.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "config file not found" in r.stderr and "does-not-exist.yml" in r.stderr, r.stderr


def test_training_domain_comes_from_the_data(tmp_path: Path) -> None:
    """A new field needs only its data file: the domain is generated from the data."""
    data = tmp_path / "data"
    shutil.copytree(ROOT / "nlu" / "data", data)
    (data / "health.yml").write_text(
        'version: "3.1"\nnlu:\n'
        "- intent: health+procedure\n  examples: |\n    - thẻ bảo hiểm y tế cấp lại quá lâu\n"
        "- intent: health+conduct\n  examples: |\n    - nhân viên trạm y tế quát nạt người bệnh\n",
        encoding="utf-8",
    )
    intents = data_intents(data)
    assert {"health+procedure", "health+conduct", "land+procedure", "greet"} <= set(intents)
    shipped = yaml.safe_load((ROOT / "nlu" / "domain.yml").read_text(encoding="utf-8"))
    assert set(intents) == set(shipped["intents"]) | {"health+procedure", "health+conduct"}
    write_domain(intents, tmp_path / "domain.yml")
    domain = yaml.safe_load((tmp_path / "domain.yml").read_text(encoding="utf-8"))
    assert domain["intents"] == intents


async def test_env_setup_failure_carries_the_scripts_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "setup_env.sh"
    script.write_text(
        "echo 'setup_env: no Python 3.10 interpreter could be found or downloaded.' >&2\nexit 3\n"
    )
    monkeypatch.setenv("RASA_VENV", str(tmp_path / "venv"))
    monkeypatch.setattr(rasa, "SETUP_SCRIPT", script)
    monkeypatch.setattr(rasa, "find_uv", lambda: Path("/usr/bin/true"))
    with pytest.raises(RasaEnvError) as err:
        await rasa.ensure_env()
    message = str(err.value)
    assert "no Python 3.10 interpreter" in message
    assert "python install 3.10" in message and "pyenv install 3.10.13" in message
