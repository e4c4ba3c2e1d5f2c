"""Configuration: every key overridable from the environment; wrong values named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.toml"


def test_defaults_are_sqlite_webchat_on_8080() -> None:
    s = load_settings(CONFIG, {})
    assert s.storage.url.startswith("sqlite:///")
    assert s.server.port == 8080
    assert s.chat.enabled
    assert [lv.vi for lv in s.rating.scale][-1] == "Rất hài lòng"
    assert len(s.rating.criteria) == 5


def test_environment_overrides_any_key() -> None:
    s = load_settings(
        CONFIG,
        {
            "HAILONG_STORAGE_URL": "postgresql://u@db:5432/x",
            "HAILONG_SERVER_PORT": "9000",
            "HAILONG_API_TOKEN": "a-very-long-secret-token",
            "HAILONG_CHAT_ENABLED": "false",
            "HAILONG_SERVER_PUBLIC_URL": "https://hailong.example.vn/",
            "HAILONG_WORKDAYS_EXTRA_DAYS_OFF": '["2026-12-31"]',
        },
    )
    assert s.storage.url == "postgresql://u@db:5432/x"
    assert s.server.port == 9000
    assert s.api.token == "a-very-long-secret-token"
    assert s.chat.enabled is False
    assert s.public_url == "https://hailong.example.vn"
    assert [d.isoformat() for d in s.workdays.extra_days_off] == ["2026-12-31"]


def test_deadlines_per_field_and_category_take_the_most_specific_override() -> None:
    overrides = (
        '[{"field": "judicial_records", "answer_days": 10},'
        ' {"category": "conduct", "answer_days": 7, "forward_days": 2},'
        ' {"field": "land", "category": "conduct", "forward_days": 1}]'
    )
    d = load_settings(CONFIG, {"HAILONG_DEADLINES_OVERRIDES": overrides}).deadlines
    assert (d.answer_days_for("land", "procedure"), d.forward_days_for("land", "procedure")) == (
        15,
        5,
    )
    assert d.answer_days_for("judicial_records", "procedure") == 10
    assert d.forward_days_for("judicial_records", "procedure") == 5
    assert (d.answer_days_for("land", "conduct"), d.forward_days_for("land", "conduct")) == (7, 1)
    assert d.forward_days_for("construction", "conduct") == 2
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, {"HAILONG_DEADLINES_OVERRIDES": '[{"field": "land"}]'})
    assert "needs answer_days or forward_days" in str(err.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"HAILONG_SERVER_PORT": "abc"},
            "server.port = 'abc' (environment variable HAILONG_SERVER_PORT)",
        ),
        ({"HAILONG_SERVER_PORT": "70000"}, "less than or equal to 65535"),
        ({"HAILONG_STORAGE_URL": "mysql://x"}, "storage.url"),
        ({"HAILONG_API_TOKEN": "short"}, "at least 16 characters"),
        ({"HAILONG_CHAT_DEFAULT_LANGUAGE": "fr"}, "'vi' or 'en'"),
        ({"HAILONG_SERVER_PORTT": "1"}, "HAILONG_SERVER_PORTT: [server] has no key 'portt'"),
        ({"HAILONG_NOPE_X": "1"}, "HAILONG_NOPE_X: unknown section"),
        ({"HAILONG_RATING_SCALE": "[1,2"}, "HAILONG_RATING_SCALE: not valid JSON"),
    ],
)
def test_a_wrong_value_names_the_key_and_what_is_allowed(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, env)
    assert expected in str(err.value)


def test_scale_with_more_than_five_levels_is_refused(tmp_path: Path) -> None:
    text = CONFIG.read_text(encoding="utf-8").replace(
        '  { value = 5, vi = "Rất hài lòng"',
        '  { value = 6, vi = "Tuyệt vời", en = "Great", counts_as = "satisfied" },\n'
        '  { value = 5, vi = "Rất hài lòng"',
    )
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rating\.scale"):
        load_settings(path, {})


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.read_text(encoding="utf-8") + "\n[server2]\nx = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"server2 \(.*config\.toml\): unknown setting"):
        load_settings(path, {})


def test_the_test_suites_own_variables_are_not_settings() -> None:
    s = load_settings(CONFIG, {"HAILONG_TEST_REQUIRE_PG": "1", "HAILONG_CONFIG": str(CONFIG)})
    assert s.server.port == 8080


def test_the_program_stops_with_the_message_and_exit_code_2() -> None:
    r = subprocess.run(
        [sys.executable, "bot.py", "config"],
        cwd=ROOT,
        env={"HAILONG_SERVER_PORT": "eighty", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "server.port" in r.stderr and "HAILONG_SERVER_PORT" in r.stderr
