"""The one HTTP server: web chat, dossier API, health; and the workers behind it.

browser ─POST /chat/api/events─▶ WebChat ─▶ Ingress (inbox) ─▶ Dispatcher
    ─▶ ConversationService (engine + actions, one transaction) ─▶ outbox
    ─▶ OutboxSender ─▶ channel.send ─▶ browser polls /chat/api/messages
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from sqlalchemy import func, text
from sqlmodel import select

from bot import backfill
from bot.api import DossierApi
from bot.channels.base import Channel
from bot.channels.telegram import Telegram
from bot.channels.webchat import WebChat
from bot.channels.zalo import ZaloOA
from bot.channels.zalo_bot import ZaloBot
from bot.clock import Clock
from bot.config import Settings
from bot.conversation import ConversationService
from bot.dispatcher import Dispatcher
from bot.flowstore import FlowCache, seed_flows
from bot.ingress import Ingress
from bot.metrics import CONTENT_TYPE, Metrics
from bot.nlu import NluClient
from bot.outbox import OutboxSender
from bot.workdays import WorkCalendar
from storage.db import Database
from storage.models import InboxEvent, OutboxMessage

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


@dataclass
class Service:
    """Everything a running bot holds; tests reach inside through `app[SERVICE]`."""

    settings: Settings
    clock: Clock
    db: Database
    calendar: WorkCalendar
    flows: FlowCache
    conversations: ConversationService
    dispatcher: Dispatcher
    ingress: Ingress
    sender: OutboxSender
    metrics: Metrics
    nlu: NluClient
    channels: dict[str, Channel] = field(default_factory=dict)
    # The Rasa server this process started ([nlu] autostart), if any.
    rasa: Any = None
    # The clock tick (bot/scheduler.py): escalations, reminders, digests.
    ticker: Any = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


SERVICE = web.AppKey("service", Service)


def build_service(
    settings: Settings, clock: Clock, extra_channels: dict[str, Channel] | None = None
) -> Service:
    db = Database(settings.storage.url, settings.base_dir, settings.storage.pool_size)
    calendar = WorkCalendar(settings.workdays.extra_days_off, settings.workdays.makeup_working_days)
    flows = FlowCache(settings)
    channels: dict[str, Channel] = dict(extra_channels or {})
    if settings.chat.enabled:
        channels["webchat"] = WebChat(db, settings)
    if settings.telegram.enabled:
        channels["telegram"] = Telegram(settings.telegram)
    if settings.zalo.enabled:
        channels["zalo"] = ZaloOA(db, settings.zalo, clock)
    if settings.zalo_bot.enabled:
        channels["zalo_bot"] = ZaloBot(settings.zalo_bot)
    metrics = Metrics()
    # A Rasa server started by this process gets a fresh token unless one is configured.
    token = settings.nlu.token or (secrets.token_hex(24) if settings.nlu.autostart else "")
    nlu = NluClient(settings.nlu, metrics, token=token)
    sender = OutboxSender(db, clock, channels, settings.outbox, metrics)
    conversations = ConversationService(
        db, settings, clock, flows, on_outbox=sender.wake, metrics=metrics, nlu=nlu,
        calendar=calendar, sender=sender,
    )  # fmt: skip
    # One batch at a time, on SQLite (one writer) and on PostgreSQL alike: what arrives
    # while a batch runs makes the next one larger. Side by side on PostgreSQL, batches
    # came smaller, each paying its round trips (4 workers: ~15% fewer events/s).
    dispatcher = Dispatcher(conversations, db, clock)
    ingress = Ingress(db, dispatcher, clock, metrics)
    for channel in channels.values():
        if hasattr(channel, "ingress"):
            channel.ingress = ingress  # type: ignore[attr-defined]
        if hasattr(channel, "metrics"):
            channel.metrics = metrics  # type: ignore[attr-defined]
    return Service(
        settings,
        clock,
        db,
        calendar,
        flows,
        conversations,
        dispatcher,
        ingress,
        sender,
        metrics,
        nlu,
        channels,
    )


@web.middleware
async def errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """An unexpected error is logged with its request and answered without details."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        if request.path.startswith(("/api/", "/chat/api/")):
            return web.json_response(
                {"error": "temporarily unavailable; nothing was lost, please retry"}, status=503
            )
        return web.Response(status=503, text="Hệ thống tạm thời gián đoạn, vui lòng thử lại sau.")


async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: the database answers; queue lengths for a glance."""
    service = request.app[SERVICE]
    try:
        async with service.db.sessions() as s:
            await s.exec(text("SELECT 1"))  # type: ignore[call-overload]
            inbox = await s.scalar(select(func.count()).where(InboxEvent.status == "pending"))
            outbox = await s.scalar(
                select(func.count()).where(OutboxMessage.status.in_(("pending", "sending")))  # type: ignore[attr-defined]
            )
            failed = await s.scalar(select(func.count()).where(OutboxMessage.status == "failed"))
    except Exception as exc:
        log.warning("health check: database unavailable: %s", exc)
        return web.json_response({"status": "error", "database": "unavailable"}, status=503)
    return web.json_response(
        {
            "status": "ok",
            "database": "ok",
            "nlu": nlu_state(service),
            "inbox_pending": inbox,
            "outbox_pending": outbox,
            "outbox_failed": failed,
        }
    )


def nlu_state(service: Service) -> str:
    """ready | starting | failed: … (a Rasa this process runs); external | circuit open."""
    rasa = service.rasa
    if rasa is not None:
        if rasa.is_ready:
            return "ready"
        return f"failed: {rasa.error}" if rasa.error else "starting"
    return "circuit open" if service.nlu.circuit_open else "external"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    service = request.app[SERVICE]
    body = await service.metrics.render(service.db)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/chat")


def build_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=256 * 1024)
    app[SERVICE] = service
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static", HERE / "static")
    api = DossierApi(
        service.db, service.settings, service.clock, service.calendar, service.channels
    )
    app.add_routes(api.routes())
    for channel in service.channels.values():
        routes = getattr(channel, "routes", None)
        if routes is not None:
            app.add_routes(routes())
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def seed_startup(service: Service) -> None:
    """What every start does before serving: publish new or changed shipped flows."""
    async with service.db.transaction() as s:
        if not service.db.is_sqlite:
            # Processes starting together seed one after the other (SQLite's writer lock
            # does this already): the second finds the flows published.
            await s.exec(text("SELECT pg_advisory_xact_lock(7140001)"))  # type: ignore[call-overload]
        for note in await seed_flows(s, service.settings, service.clock.now()):
            log.info("flow published from flows/data: %s", note)


async def start_service(service: Service) -> None:
    """Seed flows, connect the channels, start the workers."""
    await seed_startup(service)
    for channel in service.channels.values():
        start = getattr(channel, "start", None)
        if start is not None:
            await start()
    service.dispatcher.start()
    service.sender.start()
    if service.settings.nlu.autostart and service.rasa is None:
        from bot.rasa import RasaServer

        service.rasa = RasaServer(service.settings, service.nlu.token)
        await service.rasa.start()
    if service.ticker is None:
        from bot.scheduler import Ticker

        service.ticker = Ticker(
            service.db,
            service.settings,
            service.calendar,
            service.clock,
            on_outbox=service.sender.wake,
        )
        service.ticker.start()
    service.tasks.append(
        asyncio.create_task(
            backfill.run_forever(
                service.db, service.nlu, service.settings, service.calendar, service.clock
            ),
            name="nlu-backfill",
        )
    )


async def stop_service(service: Service) -> None:
    """Let the conversations under way finish, stop sending, disconnect."""
    if service.ticker is not None:
        await service.ticker.stop()
        service.ticker = None
    for task in service.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    service.tasks.clear()
    await service.dispatcher.stop()
    await service.sender.stop()
    for channel in service.channels.values():
        stop = getattr(channel, "stop", None)
        if stop is not None:
            await stop()
    if service.rasa is not None:
        await service.rasa.stop()
        service.rasa = None
    await service.nlu.close()
    await service.db.dispose()


async def _start(app: web.Application) -> None:
    await start_service(app[SERVICE])


async def _stop(app: web.Application) -> None:
    await stop_service(app[SERVICE])
