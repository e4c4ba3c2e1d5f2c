"""Officials link their messenger account once with a one-time code, then get notices."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient
from sqlmodel import select

from bot.app import Service
from bot.clock import ManualClock
from bot.officials import issue_link_code, notify_official
from storage.models import LinkCode, Official, OfficialAccount
from tests.chat import settle
from tests.fakes import FakeTelegram
from tests.telegram_users import TelegramCitizen

OFFICIAL_CHAT = 7_100_200_300
ROOT = Path(__file__).resolve().parent.parent


async def head_of_ward(service: Service) -> int:
    async with service.db.sessions() as s:
        official = (await s.exec(select(Official).where(Official.name == "Nguyễn Văn Hùng"))).one()
    assert official.id is not None
    return official.id


async def test_an_official_links_telegram_with_a_code_and_receives_notices(
    telegram_bot: tuple[Service, TestClient],
    fake_telegram: FakeTelegram,
    clock: ManualClock,
) -> None:
    service, http = telegram_bot
    official_id = await head_of_ward(service)
    async with service.db.transaction() as s:
        code = await issue_link_code(s, official_id, clock.now())
    assert re.fullmatch(r"LK-[2-9A-Z]{4}-[2-9A-Z]{4}", code)

    official = TelegramCitizen(fake_telegram, http, clock, user=OFFICIAL_CHAT)
    typed = code.lower().replace("-", " ")  # typed by hand, loosely
    reply = await official.say(typed)
    assert "Đã liên kết tài khoản này với cán bộ Nguyễn Văn Hùng" in reply[0].text
    assert "UBND phường Việt Trì" in reply[0].text

    async with service.db.transaction() as s:
        queued = await notify_official(
            s, official_id, "Có 1 phản ánh mới cần xử lý: PAKN.20261123.0001", clock.now()
        )
    assert queued == 1
    service.sender.wake()
    await settle(http, clock=clock)
    assert (
        fake_telegram.sent_to(OFFICIAL_CHAT)[-1].text
        == "Có 1 phản ánh mới cần xử lý: PAKN.20261123.0001"
    )

    # The code works once.
    intruder = TelegramCitizen(fake_telegram, http, clock, user=OFFICIAL_CHAT + 1)
    assert "không đúng, đã được dùng hoặc đã hết hạn" in (await intruder.say(code))[0].text
    async with service.db.sessions() as s:
        accounts = (await s.exec(select(OfficialAccount))).all()
        stored = (await s.exec(select(LinkCode))).one()
    assert [(a.channel, a.user_key, a.official_id) for a in accounts] == [
        ("telegram", str(OFFICIAL_CHAT), official_id)
    ]
    assert stored.code_hash != code and code not in stored.code_hash  # only the hash is kept


async def test_an_expired_or_made_up_code_links_nothing(
    telegram_bot: tuple[Service, TestClient],
    fake_telegram: FakeTelegram,
    clock: ManualClock,
) -> None:
    service, http = telegram_bot
    async with service.db.transaction() as s:
        code = await issue_link_code(s, await head_of_ward(service), clock.now())
    clock.advance(hours=73)
    official = TelegramCitizen(fake_telegram, http, clock, user=OFFICIAL_CHAT)
    assert "đã hết hạn" in (await official.say(code))[0].text
    assert "đã hết hạn" in (await official.say("LK-2345-6789"))[0].text
    async with service.db.sessions() as s:
        assert not (await s.exec(select(OfficialAccount))).all()


def test_link_code_and_qr_from_the_command_line(tmp_path: Path) -> None:
    env = {"HAILONG_STORAGE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "bot.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run("demo").returncode == 0
    listed = run("official", "list", "--agency", "H42.51").stdout
    first = int(listed.split()[0])
    assert "Chủ tịch UBND phường" in listed
    issued = run("official", "link-code", str(first))
    assert issued.returncode == 0 and re.match(r"LK-[2-9A-Z]{4}-[2-9A-Z]{4}\n", issued.stdout)
    assert run("official", "link-code", "999999").returncode == 1

    png = tmp_path / "receipt.png"
    env.update(
        HAILONG_TELEGRAM_TOKEN="7012345678:AAHfakeTokenForTests_0123456789abcdef",
        HAILONG_TELEGRAM_USERNAME="hailong_phutho_bot",
    )
    out = run("qr", "h42.51.01 - 261120 - 0042", "-o", str(png))
    assert out.returncode == 0, out.stderr
    assert "https://t.me/hailong_phutho_bot?start=H42_51_01-261120-0042" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run("qr", "not-a-code").returncode == 1
