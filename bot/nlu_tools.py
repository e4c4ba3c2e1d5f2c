"""`nlu classify` and `nlu export-corrections`: the classifier from the command line.

classify: one text per stdin line → one JSON line {"text", "field", "category",
"confidence"}, in the same order (an empty line gives nulls). It uses the Rasa server at
[nlu] url when one answers there, else starts one for the run (training a model first if
none exists) and stops it at the end.

export-corrections: reports whose field the citizen corrected (the field they picked is
not the one Rasa read) as Rasa training data, `<field>+<category>` intents, to add to
nlu/data/ and retrain.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import IO, Any

import aiohttp
from sqlmodel import col, select

from bot.config import Settings
from bot.nlu import NluClient
from nlu.reading import Reading
from nlu.text import nfc
from storage.db import Database
from storage.models import Report

# The command line waits longer than a citizen would: a fresh server warms up first.
CLI_TIMEOUT_SECONDS = 60.0


async def _answers(url: str, token: str) -> bool:
    """Does a Rasa server with a model loaded answer at `url` with `token`?"""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
            http.get(f"{url}/status", params={"token": token} if token else None) as resp,
        ):
            return resp.status == 200 and bool((await resp.json()).get("model_file"))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return False


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _line(text: str, reading: Reading | None) -> str:
    return json.dumps(
        {
            "text": text,
            "field": reading.field if reading else None,
            "category": reading.category if reading else None,
            "confidence": round(reading.field_confidence, 4) if reading else None,
        },
        ensure_ascii=False,
    )


async def classify_lines(
    settings: Settings, lines: Iterable[str], out: IO[str], log: IO[str] = sys.stderr
) -> int:
    """Classify each line; returns the number of lines Rasa could not classify."""
    nlu = settings.nlu
    token = nlu.token
    server = None
    if not await _answers(nlu.url, token):
        if not nlu.autostart:
            raise RuntimeError(
                f"no Rasa server answers at {nlu.url} (autostart is off): start one with "
                "`python bot.py nlu serve`, or set [nlu] autostart = true"
            )
        from bot.rasa import RasaServer

        token = token or secrets.token_hex(24)
        if _port_in_use(nlu.port):
            # Something else (e.g. the running bot's own Rasa, with its own token) is there.
            nlu = nlu.model_copy(update={"url": f"http://127.0.0.1:{_free_port()}"})
            settings = settings.model_copy(update={"nlu": nlu})
        server = RasaServer(settings, token)
        print(f"starting Rasa on {nlu.url} for this run…", file=log, flush=True)
        await server.start()
        if not await server.wait_ready(nlu.start_timeout_seconds + 3600):
            await server.stop()
            raise RuntimeError("the Rasa server did not become ready (see data/rasa.log)")
    client = NluClient(
        nlu.model_copy(update={"timeout_seconds": CLI_TIMEOUT_SECONDS, "breaker_failures": 1000}),
        token=token,
    )
    failed = 0
    try:
        texts = [nfc(line.rstrip("\r\n")) for line in lines]

        async def one(text: str) -> Reading | None:
            # Text starting with "/" is a Rasa command to the bot's client; here it is data.
            body = text.lstrip("/ ").strip()
            return await client.read(body) if body else None

        batch = max(1, nlu.max_concurrency * 4)
        for i in range(0, len(texts), batch):
            chunk = texts[i : i + batch]
            readings = await asyncio.gather(*(one(t) for t in chunk))
            for text, reading in zip(chunk, readings, strict=True):
                if reading is None and text.strip("/ "):
                    failed += 1
                out.write(_line(text, reading) + "\n")
            out.flush()
    finally:
        await client.close()
        if server is not None:
            await server.stop()
    return failed


# ---------------------------------------------------------------- corrections

_PHONE = re.compile(r"(?<!\d)(?:\+?84|0)(?:[\s.]?\d){9}(?!\d)")


def training_text(text: str) -> str:
    """One line, NFC, phone numbers replaced (personal data stays out of training files)."""
    return _PHONE.sub("0900000000", " ".join(nfc(text).split()))


async def corrections(db: Database, since: datetime | None = None) -> list[tuple[str, str]]:
    """(intent, text) for every report whose field the citizen corrected, oldest first."""
    query = (
        select(Report)
        .where(
            col(Report.nlu_field).is_not(None),
            Report.field_source == "citizen",
            col(Report.field) != col(Report.nlu_field),
        )
        .order_by(col(Report.id))
    )
    if since is not None:
        query = query.where(Report.created_at >= since)
    async with db.sessions() as s:
        rows = list(await s.exec(query))
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for r in rows:
        text = training_text(r.text)
        if not text or text in seen:
            continue
        seen.add(text)
        out.append((f"{r.field}+{r.category or r.nlu_category or 'procedure'}", text))
    return out


def _yaml_block(text: str) -> str:
    # Inside a literal block each example is "- text" on one line; nothing needs escaping.
    return f"    - {text}"


def corrections_yaml(items: Sequence[tuple[str, str]], now: datetime) -> str:
    by_intent: dict[str, list[str]] = {}
    for intent, text in items:
        by_intent.setdefault(intent, []).append(text)
    lines = [
        'version: "3.1"',
        "",
        f"# Corrections made by citizens, exported {now:%Y-%m-%d %H:%M} UTC by "
        "`bot.py nlu export-corrections`.",
        "# Review, then keep this file in nlu/data/ and run `bot.py nlu train`.",
        "nlu:",
    ]
    for intent in sorted(by_intent):
        lines += [f"- intent: {intent}", "  examples: |"]
        lines += [_yaml_block(t) for t in by_intent[intent]]
    return "\n".join(lines) + "\n"


def describe(items: Sequence[tuple[str, str]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for intent, _ in items:
        counts[intent] = counts.get(intent, 0) + 1
    return counts


# ---------------------------------------------------------------- commands


def cmd_nlu_classify(args: Any) -> int:
    """Classify text: one text per stdin line → one JSON line {text, field, category, …}."""
    from bot.config import load_settings

    settings = load_settings(args.config)
    try:
        failed = asyncio.run(classify_lines(settings, sys.stdin, sys.stdout))
    except RuntimeError as exc:
        print(f"nlu classify: {exc}", file=sys.stderr)
        return 1
    if failed:
        print(f"nlu classify: {failed} line(s) could not be classified", file=sys.stderr)
        return 1
    return 0


def cmd_nlu_export_corrections(args: Any) -> int:
    """Export the fields citizens corrected as Rasa training examples (YAML)."""
    from bot.clock import Clock
    from bot.config import load_settings

    settings = load_settings(args.config)
    since = datetime.fromisoformat(args.since) if args.since else None
    if since is not None and since.tzinfo is None:
        from bot.clock import VIETNAM

        since = since.replace(tzinfo=VIETNAM)

    async def go() -> list[tuple[str, str]]:
        db = Database(settings.storage.url, settings.base_dir, settings.storage.pool_size)
        try:
            return await corrections(db, since)
        finally:
            await db.dispose()

    items = asyncio.run(go())
    text = corrections_yaml(items, Clock().now())
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text, encoding="utf-8")
        counts = ", ".join(f"{k} {v}" for k, v in describe(items).items()) or "none"
        print(f"{len(items)} correction(s) written to {args.out} ({counts})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_tool_commands(nlu_sub: Any) -> None:
    """`nlu classify` and `nlu export-corrections` (see bot/nlu_cli.py for the others)."""
    from bot.nlu_cli import add_nlu_command

    add_nlu_command(nlu_sub, "classify", cmd_nlu_classify)
    ex = add_nlu_command(nlu_sub, "export-corrections", cmd_nlu_export_corrections)
    ex.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    ex.add_argument("--since", metavar="YYYY-MM-DD", help="only reports created since this day")
