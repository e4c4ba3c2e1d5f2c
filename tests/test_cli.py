"""The command line, run as a newcomer would: real processes, real ports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def bot(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bot.py", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_every_command_with_a_description() -> None:
    r = bot("--help")
    assert r.returncode == 0
    for command in ("run", "db", "demo", "satisfaction", "flows", "config"):
        assert re.search(rf"^\s+{command}\s+\S", r.stdout, re.M), (command, r.stdout)
    flows = bot("flows", "--help")
    for action in ("validate", "list", "publish", "rollback"):
        assert re.search(rf"^\s+{action}\s+\S", flows.stdout, re.M), (action, flows.stdout)


def test_demo_then_satisfaction_summary(tmp_path: Path) -> None:
    env = {"HAILONG_STORAGE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    r = bot("demo", env=env)
    assert r.returncode == 0, r.stderr
    assert "demo data loaded" in r.stdout
    codes = re.findall(r"^\s+(\S+-\d{6}-\d{4})\s+http", r.stdout, re.M)
    assert len(codes) == 5
    again = bot("demo", env=env)
    assert "already has data" in again.stdout

    r = bot("satisfaction", "--json", "--by", "agency", "--by", "field", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    total = data["agency"]["total"]
    assert total["ratings"] > 50
    assert total["answers"] == total["ratings"] * 5
    assert sum(ln["answers"] for ln in data["agency"]["lines"]) == total["answers"]
    assert sum(ln["satisfied"] for ln in data["field"]["lines"]) == total["satisfied"]
    assert total["rate"] == round(100 * total["satisfied"] / total["answers"], 1)
    table = bot("satisfaction", env=env).stdout
    assert "Theo cơ quan" in table and "Tổng cộng" in table


def test_flows_validate_names_the_broken_step(tmp_path: Path) -> None:
    ok = bot("flows", "validate")
    assert ok.returncode == 0 and "main, rating" in ok.stdout
    broken = (
        (ROOT / "flows/data/rating.yaml")
        .read_text(encoding="utf-8")
        .replace("      ready: intro", "      ready: introduction")
    )
    path = tmp_path / "rating.yaml"
    path.write_text(broken, encoding="utf-8")
    r = bot("flows", "validate", str(path))
    assert r.returncode == 1
    assert "step lookup outcome 'ready': goes to unknown step 'introduction'" in r.stderr


@pytest.mark.slow
async def test_run_starts_with_demo_data_and_a_citizen_can_rate(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HAILONG_STORAGE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "HAILONG_SERVER_PORT": str(port),
        "HAILONG_NLU_AUTOSTART": "false",
        "PYTHONUNBUFFERED": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "bot.py",
        "run",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()  # type: ignore[union-attr]
            assert line, "bot exited early:\n" + "".join(out)
            out.append(line)
            if "hailong is running" in line:
                break
        printed = "".join(out)
        code = re.findall(r"^\s+(\S+-\d{6}-\d{4})\s+http", printed, re.M)[0]
        base = f"http://127.0.0.1:{port}"
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base, cookie_jar=jar) as http:
            assert (await (await http.get("/healthz")).json())["status"] == "ok"
            assert (await http.get("/chat")).status == 200
            r = await http.post("/chat/api/events", json={"id": uuid.uuid4().hex, "start": code})
            assert r.status == 202
            seen: list[dict] = []
            for _ in range(20):
                data = await (await http.get("/chat/api/messages?after=0&wait=2")).json()
                seen = data["messages"]
                if any("(1/5)" in m["text"] for m in seen):
                    break
            assert any(code in m["text"] for m in seen)
            assert seen[-1]["text"].split("\n\n")[-1].startswith("(1/5)")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


async def test_chat_in_the_terminal_goes_through_the_same_path(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HAILONG_STORAGE_URL": f"sqlite:///{tmp_path / 'chat.db'}",
        "HAILONG_NLU_AUTOSTART": "false",
        "PYTHONUNBUFFERED": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "bot.py",
        "chat",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def until(text: str) -> str:
        seen = []
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()  # type: ignore[union-attr]
            assert line, "chat exited:\n" + "".join(seen)
            seen.append(line)
            if text in line:
                return "".join(seen)

    try:
        printed = await until("[4] Hướng dẫn")
        code = re.findall(r"^\s+(\S+-\d{6}-\d{4})\s+http", printed, re.M)[0]
        proc.stdin.write(b"1\n")
        await until("nhập mã hồ sơ")
        proc.stdin.write(f"{code}\n".encode())
        await until("(1/5)")
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


@pytest.mark.slow
async def test_run_starts_rasa_itself_and_stops_it_on_exit(tmp_path: Path, rasa_server) -> None:  # type: ignore[no-untyped-def]
    """`run` with [nlu] autostart (the default): its own Rasa, classifying in the chat."""
    port, rasa_port = free_port(), free_port()
    env = {
        **os.environ,
        "HAILONG_STORAGE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "HAILONG_SERVER_PORT": str(port),
        "HAILONG_NLU_URL": f"http://127.0.0.1:{rasa_port}",
        # The model the session already trained (the default one takes minutes to train).
        "HAILONG_NLU_MODEL": rasa_server.settings.nlu.model,
        "HAILONG_NLU_CONFIG": rasa_server.settings.nlu.config,
        "PYTHONUNBUFFERED": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "bot.py", "run", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        while b"hailong is running" not in (line := await proc.stdout.readline()):  # type: ignore[union-attr]
            assert line, "bot exited early"
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", cookie_jar=jar) as http:
            health: dict = {}
            for _ in range(240):  # Rasa loads its model while the bot already serves
                health = await (await http.get("/healthz")).json()
                if health["nlu"] != "starting":
                    break
                await asyncio.sleep(0.5)
            assert health["nlu"] == "ready", health
            await http.get("/chat")
            text = "xin giay phep xay dung nha o 3 tang nop 1 thang roi chua duoc cap"
            await http.post("/chat/api/events", json={"id": uuid.uuid4().hex, "text": text})
            seen: list[dict] = []
            for _ in range(20):
                seen = (await (await http.get("/chat/api/messages?after=0&wait=2")).json())[
                    "messages"
                ]
                if seen:
                    break
            assert "thuộc lĩnh vực Xây dựng" in seen[-1]["text"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 0
    with socket.socket() as s:  # nothing listens on Rasa's port any more
        assert s.connect_ex(("127.0.0.1", rasa_port)) != 0
