"""Officials at their desk in the messenger, and the citizen's answer to "is it solved?".

A new report is announced to the officials responsible for it with four buttons. What an
official taps (or, for those not linked yet, types on the command line: bot/report_cli.py)
goes through the same functions here, so both check the same rules and have the same
effects: a transition with its audit row (bot/reports.py) and a message to the citizen.

Button payloads (ASCII, well under Telegram's 64 bytes):

    of:open:<report id>        the report in full, with the buttons its state allows
    of:accept:<id>             take it up (Nhận xử lý)
    of:reply:<id>              the next text message is the answer sent to the citizen
    of:resolve:<id>            mark it resolved; the citizen is asked to confirm
    of:reassign:<id>           pick another agency (of:to:<id>:<agency id>), then the reason
    of:cancel:<id>             forget a pending reply or reassignment
    rc:yes:<id> / rc:no:<id>   the citizen: solved (closed) / not solved (reopened, one up)

On Zalo OA a tap arrives as a text message; a text equal to a payload is taken as a tap.

Nothing in a payload is trusted. An official may act on a report when it belongs to their
agency, when they are among the officials responsible for it at a level up to the
report's current one, or when they are handling it; never on a complaint about
themselves. A citizen may answer only for their own reports. A refused, unknown or
malformed payload, or one whose report has moved on (a stale button), gets an answer
saying so and changes nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.channels.base import message_body
from bot.clock import local_date
from bot.config import Settings
from bot.officials import notify_official
from bot.reports import (
    TRANSITIONS,
    Directory,
    TransitionError,
    deadline,
    first_level,
    forward_deadline,
    next_reminder,
    reopen,
    responsible,
    transition,
)
from bot.workdays import WorkCalendar
from nlu.text import fold
from storage.messages import ConversationRow, EventRow
from storage.models import (
    Agency,
    Conversation,
    FieldOfWork,
    Official,
    OfficialAccount,
    OutboxMessage,
    Report,
    Route,
)

log = logging.getLogger(__name__)

Button = dict[str, str]
Reply = tuple[str, list[Button]]

DESK_VAR = "_desk"
MAX_TARGETS = 4  # + "Hủy": Zalo shows at most 5 buttons
MAX_REASON_CHARS = 1000
EXCERPT_CHARS = 300
# The official's own actions, in the order their buttons are shown.
OFFICIAL_ACTIONS = ("accept", "reply", "resolve", "reassign")

_OF = re.compile(r"of:(open|accept|reply|resolve|reassign|cancel):(\d{1,12})")
_OF_TO = re.compile(r"of:to:(\d{1,12}):(\d{1,12})")
_RC = re.compile(r"rc:(yes|no):(\d{1,12})")
_CANCEL = frozenset(("huy", "thoi", "thoat", "cancel", "stop", "/cancel", "huy bo"))
_MENU = frozenset(("menu", "/menu", "/start", "trang chinh", "ve menu", "main menu"))

# ---------------------------------------------------------------- texts

TEXTS: dict[str, dict[str, str]] = {
    # to officials
    "not_official": {
        "vi": "Chức năng này chỉ dành cho cán bộ đã liên kết tài khoản với hệ thống. Nếu "
        "anh/chị là cán bộ, xin liên hệ quản trị viên để nhận mã liên kết.",
        "en": "This is only for officials who have linked their account. If you are an "
        "official, please ask the administrator for a link code.",
    },
    "bad_button": {
        "vi": "Nút bấm này không hợp lệ. Xin anh/chị dùng các nút trong thông báo mới nhất. "
        "Không có thay đổi nào được thực hiện.",
        "en": "This button is not valid. Please use the buttons of the latest notice. "
        "Nothing was changed.",
    },
    "not_found": {
        "vi": "Không tìm thấy phản ánh này. Không có thay đổi nào được thực hiện.",
        "en": "This feedback was not found. Nothing was changed.",
    },
    "refused": {
        "vi": "Anh/chị không có quyền xử lý phản ánh này: phản ánh không thuộc cơ quan hoặc "
        "phạm vi trách nhiệm của anh/chị. Không có thay đổi nào được thực hiện.",
        "en": "You may not act on this feedback: it is not within your agency or your "
        "responsibility. Nothing was changed.",
    },
    "stale": {
        "vi": "Phản ánh {code} hiện {state}, nên không thể {action} nữa. Không có thay đổi "
        "nào được thực hiện.",
        "en": "Feedback {code} is now {state}, so it can no longer be {action}. Nothing was "
        "changed.",
    },
    "already_yours": {
        "vi": "Anh/chị đã nhận xử lý phản ánh {code} từ trước.",
        "en": "You have already taken up feedback {code}.",
    },
    "accepted": {
        "vi": "Anh/chị đã nhận xử lý phản ánh {code}. Người dân đã được thông báo. Hạn trả "
        "lời: {due}.",
        "en": "You have taken up feedback {code}. The citizen has been told. Answer due: {due}.",
    },
    "ask_reply": {
        "vi": "Xin anh/chị nhập nội dung trả lời phản ánh {code}. Tin nhắn tiếp theo của "
        "anh/chị sẽ được gửi nguyên văn cho người dân. Gõ «hủy» để thôi.",
        "en": "Please type your answer to feedback {code}. Your next message is sent to the "
        'citizen as written. Type "cancel" to stop.',
    },
    "replied": {
        "vi": "Đã gửi trả lời phản ánh {code} tới người dân. Khi vấn đề đã được giải quyết, "
        "xin bấm «Đã giải quyết».",
        "en": "Your answer to feedback {code} has been sent to the citizen. When the problem "
        'is solved, tap "Resolved".',
    },
    "resolved": {
        "vi": "Đã ghi nhận phản ánh {code} được giải quyết. Người dân sẽ được hỏi xác nhận; "
        "nếu vấn đề chưa được giải quyết, phản ánh sẽ được mở lại và chuyển lên cấp trên.",
        "en": "Feedback {code} is marked resolved. The citizen is asked to confirm; if the "
        "problem is not solved, it is reopened and goes one level up.",
    },
    "pick_target": {
        "vi": "Chuyển phản ánh {code} tới đơn vị nào?",
        "en": "Which agency should feedback {code} go to?",
    },
    "no_targets": {
        "vi": "Không có đơn vị nào khác để chuyển phản ánh {code}. Xin liên hệ quản trị viên.",
        "en": "There is no other agency to send feedback {code} to. Please contact the "
        "administrator.",
    },
    "bad_target": {
        "vi": "Không thể chuyển phản ánh {code} tới đơn vị này. Không có thay đổi nào được "
        "thực hiện.",
        "en": "Feedback {code} cannot be sent to this agency. Nothing was changed.",
    },
    "ask_reason": {
        "vi": "Xin anh/chị nêu lý do chuyển phản ánh {code} tới {agency} (ví dụ: không thuộc "
        "thẩm quyền giải quyết). Gõ «hủy» để thôi.",
        "en": "Please give the reason for sending feedback {code} to {agency} (e.g. not "
        'within our competence). Type "cancel" to stop.',
    },
    "reassigned": {
        "vi": "Đã chuyển phản ánh {code} tới {agency}. Đơn vị mới và người dân đã được thông báo.",
        "en": "Feedback {code} has been sent to {agency}. The agency and the citizen have "
        "been told.",
    },
    "cancelled": {
        "vi": "Đã hủy. Chưa có gì được gửi cho người dân.",
        "en": "Cancelled. Nothing was sent to the citizen.",
    },
    "need_text": {
        "vi": "Xin anh/chị gõ nội dung bằng chữ (gõ «hủy» để thôi).",
        "en": 'Please type the text (type "cancel" to stop).',
    },
    "too_long": {
        "vi": "Nội dung dài quá {limit} ký tự, xin anh/chị rút gọn rồi gửi lại (gõ «hủy» để thôi).",
        "en": "The text is longer than {limit} characters; please shorten it and send it "
        'again (type "cancel" to stop).',
    },
    # to citizens
    "cz_accepted": {
        "vi": "Phản ánh {code} của anh/chị đã được {agency} tiếp nhận xử lý.",
        "en": "Your feedback {code} has been taken up by {agency}.",
    },
    "cz_reply": {
        "vi": "Trả lời phản ánh {code} của {agency}: «{text}»",
        "en": "Answer to your feedback {code} from {agency}: «{text}»",
    },
    "cz_resolved": {
        "vi": "Phản ánh {code} đã được xử lý. Vấn đề của anh/chị đã được giải quyết chưa?",
        "en": "Your feedback {code} has been dealt with. Has your problem been solved?",
    },
    "cz_reassigned": {
        "vi": "Phản ánh {code} của anh/chị đã được chuyển tới {agency} để xử lý theo đúng "
        "thẩm quyền.",
        "en": "Your feedback {code} has been sent to {agency}, the agency competent for it.",
    },
    "cz_closed": {
        "vi": "Cảm ơn anh/chị đã xác nhận. Phản ánh {code} đã kết thúc.",
        "en": "Thank you for confirming. Feedback {code} is now closed.",
    },
    "cz_reopened_up": {
        "vi": "Phản ánh {code} đã được mở lại và chuyển lên cấp trên để xử lý tiếp. Hạn trả "
        "lời mới: {due}.",
        "en": "Feedback {code} has been reopened and passed one level up. New answer date: {due}.",
    },
    "cz_reopened": {
        "vi": "Phản ánh {code} đã được mở lại để xử lý tiếp. Hạn trả lời mới: {due}.",
        "en": "Feedback {code} has been reopened to be handled further. New answer date: {due}.",
    },
    "cz_stale": {
        "vi": "Phản ánh {code} hiện ở trạng thái: {status}.",
        "en": "Feedback {code} is now: {status}.",
    },
    "cz_not_found": {
        "vi": "Không tìm thấy phản ánh này.",
        "en": "This feedback was not found.",
    },
}

BUTTON_TITLES: dict[str, dict[str, str]] = {
    "accept": {"vi": "Nhận xử lý", "en": "Take it up"},
    "reply": {"vi": "Trả lời", "en": "Reply"},
    "resolve": {"vi": "Đã giải quyết", "en": "Resolved"},
    "reassign": {"vi": "Chuyển đơn vị khác", "en": "Send elsewhere"},
    "cancel": {"vi": "Hủy", "en": "Cancel"},
    "yes": {"vi": "Đã giải quyết", "en": "Solved"},
    "no": {"vi": "Chưa", "en": "Not yet"},
}

# What an official can no longer do, as the end of "… nên không thể ___ nữa".
ACTION_NAMES: dict[str, dict[str, str]] = {
    "accept": {"vi": "nhận xử lý", "en": "taken up"},
    "reply": {"vi": "trả lời", "en": "answered"},
    "resolve": {"vi": "đánh dấu đã giải quyết", "en": "marked resolved"},
    "reassign": {"vi": "chuyển đơn vị khác", "en": "sent to another agency"},
}

# A report's state as an official reads it ("Phản ánh … hiện ___").
STATE_NAMES: dict[str, dict[str, str]] = {
    "new": {
        "vi": "mới, chưa xác định được cơ quan có thẩm quyền",
        "en": "new, no competent agency found yet",
    },
    "assigned": {"vi": "mới, chưa có cán bộ nhận xử lý", "en": "new, not taken up yet"},
    "in_progress": {"vi": "đã có cán bộ nhận xử lý{by}", "en": "taken up{by}"},
    "answered": {"vi": "đã được trả lời người dân", "en": "answered"},
    "resolved": {
        "vi": "đã được giải quyết, đang chờ người dân xác nhận",
        "en": "resolved, waiting for the citizen to confirm",
    },
    "closed": {
        "vi": "đã kết thúc (người dân xác nhận đã giải quyết)",
        "en": "closed (the citizen confirmed it is solved)",
    },
    "reopened": {"vi": "được mở lại, chờ nhận xử lý", "en": "reopened, waiting to be taken up"},
}

CATEGORY_NAMES = {
    "procedure": {"vi": "quy định, thủ tục", "en": "rules and procedures"},
    "conduct": {"vi": "thái độ, hành vi của cán bộ", "en": "an official's conduct"},
}
LABELS: dict[str, dict[str, str]] = {
    "field": {"vi": "Lĩnh vực", "en": "Field"},
    "category": {"vi": "Loại", "en": "Concerns"},
    "agency": {"vi": "Cơ quan xử lý", "en": "Agency"},
    "created": {"vi": "Ngày gửi", "en": "Sent on"},
    "due": {"vi": "Hạn trả lời", "en": "Answer due"},
    "text": {"vi": "Nội dung", "en": "Text"},
    "unknown": {"vi": "chưa xác định", "en": "not known"},
    "unclassified": {"vi": "chưa phân loại", "en": "not classified yet"},
}


def say(key: str, lang: str, **values: Any) -> str:
    texts = TEXTS[key]
    return texts.get(lang, texts["vi"]).format(**values)


def _lang(lang: str | None) -> str:
    return lang if lang in ("vi", "en") else "vi"


def shorten(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ---------------------------------------------------------------- refusals


class DeskError(Exception):
    """An action that is refused or no longer possible; nothing was changed."""

    def __init__(self, key: str, buttons: list[Button] | None = None, **values: Any) -> None:
        super().__init__(key)
        self.key, self.values, self.buttons = key, values, buttons or []

    def text(self, lang: str = "vi") -> str:
        return say(self.key, lang, **self.values)


class Refused(DeskError):
    """The official may not act on this report (or the target agency is not allowed)."""


class Stale(DeskError):
    """The report's state no longer allows the action (an old button, a repeat)."""


async def state_name(s: AsyncSession, report: Report, lang: str = "vi") -> str:
    names = STATE_NAMES.get(report.status)
    if names is None:
        return report.status
    by = ""
    if report.official_id is not None:
        official = await s.get(Official, report.official_id)
        if official is not None:
            by = f" ({official.name})" if lang == "vi" else f" by {official.name}"
    return names.get(lang, names["vi"]).format(by=by)


async def _stale(s: AsyncSession, report: Report, action: str, lang: str = "vi") -> Stale:
    return Stale(
        "stale",
        buttons=action_buttons(report, lang),
        code=report.code,
        state=await state_name(s, report, lang),
        action=ACTION_NAMES[action].get(lang, ACTION_NAMES[action]["vi"]),
    )


# ---------------------------------------------------------------- who may act


async def official_of(s: AsyncSession, channel: str, user_key: str) -> Official | None:
    """The active official linked to this messenger account, if any."""
    account = await s.scalar(
        select(OfficialAccount).where(
            OfficialAccount.channel == channel, OfficialAccount.user_key == user_key
        )
    )
    if account is None:
        return None
    official = await s.get(Official, account.official_id)
    return official if official is not None and official.active else None


async def may_act(s: AsyncSession, report: Report, official: Official, settings: Settings) -> bool:
    """The rule: own agency, responsible at a level ≤ the report's, or handling it.

    Never on a complaint about themselves, and never when inactive.
    """
    if not official.active or official.id == report.accused_official_id:
        return False
    if report.agency_id is not None and official.agency_id == report.agency_id:
        return True
    if report.official_id is not None and official.id == report.official_id:
        return True
    directory = await Directory.load(s)
    top = min(report.level, len(settings.ladder.levels) - 1)
    for level in range(top + 1):
        found = directory.responsible(report, settings, level)
        if found is not None and any(o.id == official.id for o in found.officials):
            return True
    return False


async def authorise(
    s: AsyncSession, report: Report, official: Official, settings: Settings
) -> None:
    if not await may_act(s, report, official, settings):
        log.warning(
            "official %s refused on report %s (agency %s, level %s)",
            official.id,
            report.id,
            report.agency_id,
            report.level,
        )
        raise Refused("refused")


async def _check_state(
    s: AsyncSession, report: Report, action: str, official: Official, lang: str = "vi"
) -> None:
    if report.status in TRANSITIONS[action][0]:
        return
    if action == "accept" and report.official_id == official.id and report.status == "in_progress":
        raise Stale("already_yours", buttons=action_buttons(report, lang), code=report.code)
    raise await _stale(s, report, action, lang)


async def _transition(
    s: AsyncSession,
    report: Report,
    action: str,
    now: datetime,
    official: Official,
    note: str | None = None,
    lang: str = "vi",
) -> None:
    await _check_state(s, report, action, official, lang)
    try:
        await transition(s, report, action, now, "official", official.id, note)
    except TransitionError:  # pragma: no cover - _check_state saw the same state
        raise await _stale(s, report, action, lang) from None


def action_buttons(report: Report, lang: str = "vi") -> list[Button]:
    """The official's buttons the report's state allows now."""
    return [
        {"payload": f"of:{action}:{report.id}", "title": BUTTON_TITLES[action][_lang(lang)]}
        for action in OFFICIAL_ACTIONS
        if report.status in TRANSITIONS[action][0]
    ]


def _cancel_button(report: Report, lang: str) -> Button:
    return {"payload": f"of:cancel:{report.id}", "title": BUTTON_TITLES["cancel"][_lang(lang)]}


# ---------------------------------------------------------------- reading a report


async def load_report(
    s: AsyncSession, report_id: int | None = None, code: str | None = None
) -> Report | None:
    """The report by id or code, locked for this transaction (two taps queue)."""
    query = select(Report).with_for_update()
    if report_id is not None:
        query = query.where(Report.id == report_id)
    elif code is not None:
        query = query.where(Report.code == code)
    else:
        return None
    return await s.scalar(query)


async def _agency_name(s: AsyncSession, agency_id: int | None) -> str:
    agency = await s.get(Agency, agency_id) if agency_id is not None else None
    return agency.name if agency else "cơ quan có thẩm quyền"


async def _field_name(s: AsyncSession, key: str | None, lang: str = "vi") -> str:
    field = await s.get(FieldOfWork, key) if key else None
    if field is None:
        return key or LABELS["unknown"][_lang(lang)]
    return field.name_en if lang == "en" else field.name_vi


async def describe(s: AsyncSession, report: Report, full: bool = False, lang: str = "vi") -> str:
    """The lines an official reads about a report."""
    lang = _lang(lang)

    def label(key: str) -> str:
        return LABELS[key][lang]

    category = CATEGORY_NAMES.get(report.category or "", LABELS["unclassified"])[lang]
    lines = [
        f"{label('field')}: {await _field_name(s, report.field, lang)}",
        f"{label('category')}: {category}",
        f"{label('agency')}: {await _agency_name(s, report.agency_id)}",
        f"{label('created')}: {local_date(report.created_at)}",
    ]
    if report.due_at is not None:
        lines.append(f"{label('due')}: {local_date(report.due_at)}")
    text = " ".join(report.text.split()) if full else shorten(report.text)
    lines.append(f"{label('text')}: «{text}»")
    return "\n".join(lines)


async def report_view(s: AsyncSession, report: Report, lang: str) -> Reply:
    word = "Phản ánh" if _lang(lang) == "vi" else "Feedback"
    head = f"{word} {report.code} — {await state_name(s, report, lang)}"
    return f"{head}\n{await describe(s, report, True, lang)}", action_buttons(report, lang)


# ---------------------------------------------------------------- announcing


async def announce(
    s: AsyncSession, report: Report, settings: Settings, now: datetime, headline: str
) -> int:
    """Tell the officials responsible at the report's level; how many notices were queued."""
    who = await responsible(s, report, settings, report.level)
    if who is None:
        log.warning("report %s: nobody is responsible at level %s", report.code, report.level)
        return 0
    text = f"{headline}\n{await describe(s, report)}"
    buttons = action_buttons(report, "vi")
    queued = 0
    for official in who.officials:
        assert official.id is not None
        queued += await notify_official(s, official.id, text, now, buttons)
    return queued


async def announce_new_report(
    s: AsyncSession, report: Report, settings: Settings, now: datetime
) -> None:
    """A new report: its responsible officials get it with Nhận xử lý / Trả lời / … buttons."""
    await announce(s, report, settings, now, f"Phản ánh mới cần xử lý: {report.code}")


# ---------------------------------------------------------------- the citizen's side


async def citizen_conversation(s: AsyncSession, report: Report) -> Conversation | None:
    """The citizen's conversation (the report's channel if they have several)."""
    rows = list(
        await s.exec(select(Conversation).where(Conversation.citizen_id == report.citizen_id))
    )
    if not rows:
        return None
    same = [c for c in rows if c.channel == report.channel]
    return max(same or rows, key=lambda c: c.id or 0)


async def tell_citizen(
    s: AsyncSession,
    report: Report,
    now: datetime,
    key: str,
    buttons: dict[str, str] | None = None,
    **values: Any,
) -> bool:
    """Queue a message to the report's citizen; `buttons` maps payload → title key."""
    conv = await citizen_conversation(s, report)
    if conv is None:
        log.warning("report %s: the citizen has no conversation to write to", report.code)
        return False
    lang = _lang(conv.lang)
    text = say(key, lang, code=report.code, **values)
    shown = [
        {"payload": payload, "title": BUTTON_TITLES[title][lang]}
        for payload, title in (buttons or {}).items()
    ]
    s.add(
        OutboxMessage(
            channel=conv.channel,
            recipient=conv.user_key,
            conversation_id=conv.id,
            body=message_body(text, shown, None),
            next_attempt_at=now,
            created_at=now,
        )
    )
    return True


def _confirm_buttons(report: Report) -> dict[str, str]:
    return {f"rc:yes:{report.id}": "yes", f"rc:no:{report.id}": "no"}


# ---------------------------------------------------------------- what officials do


async def accept(
    s: AsyncSession,
    report: Report,
    official: Official,
    settings: Settings,
    now: datetime,
    lang: str = "vi",
) -> None:
    """The official takes the report up; the citizen is told which agency handles it."""
    await authorise(s, report, official, settings)
    await _transition(s, report, "accept", now, official, lang=lang)
    agency = await _agency_name(s, report.agency_id)
    await tell_citizen(s, report, now, "cz_accepted", agency=agency)


async def reply(
    s: AsyncSession,
    report: Report,
    official: Official,
    text: str,
    settings: Settings,
    now: datetime,
    lang: str = "vi",
) -> None:
    """The official's answer goes to the citizen as written (and into the audit trail)."""
    await authorise(s, report, official, settings)
    text = text.strip()
    await _transition(s, report, "reply", now, official, note=text, lang=lang)
    agency = await _agency_name(s, report.agency_id)
    await tell_citizen(s, report, now, "cz_reply", agency=agency, text=text)


async def resolve(
    s: AsyncSession,
    report: Report,
    official: Official,
    settings: Settings,
    now: datetime,
    lang: str = "vi",
) -> None:
    """Marked resolved: the citizen is asked whether the problem is really solved."""
    await authorise(s, report, official, settings)
    await _transition(s, report, "resolve", now, official, lang=lang)
    await tell_citizen(s, report, now, "cz_resolved", buttons=_confirm_buttons(report))


async def province_office(s: AsyncSession, agency: Agency | None) -> Agency | None:
    """The office of the provincial people's committee (else the province itself)."""
    root, seen = agency, 0
    while root is not None and root.parent_id is not None and seen < 50:
        root, seen = await s.get(Agency, root.parent_id), seen + 1
    if root is None:
        return None
    office = await s.scalar(
        select(Agency)
        .where(Agency.parent_id == root.id, Agency.kind == "office")
        .order_by(Agency.id)  # type: ignore[arg-type]
        .limit(1)
    )
    return office or root


async def reassign_targets(
    s: AsyncSession, report: Report, limit: int | None = MAX_TARGETS
) -> list[Agency]:
    """Where the report may be sent: the field's routes (its commune's first), the
    province office; never its current agency."""
    field = report.field or "other"
    routes = list(await s.exec(select(Route).where(Route.field == field).order_by(Route.id)))  # type: ignore[arg-type]
    routes.sort(key=lambda r: (r.commune_id != report.commune_id, r.commune_id is not None))
    ids = list(dict.fromkeys(r.agency_id for r in routes))
    base = await s.get(Agency, report.agency_id) if report.agency_id else None
    if base is None and ids:
        base = await s.get(Agency, ids[0])
    office = await province_office(s, base)
    if office is not None and office.id not in ids:
        ids.append(office.id)  # type: ignore[arg-type]
    out: list[Agency] = []
    for agency_id in ids:
        if agency_id == report.agency_id:
            continue
        agency = await s.get(Agency, agency_id)
        if agency is not None:
            out.append(agency)
    return out if limit is None else out[:limit]


async def reassign(
    s: AsyncSession,
    report: Report,
    official: Official,
    target: Agency,
    reason: str,
    settings: Settings,
    now: datetime,
    lang: str = "vi",
) -> None:
    """Send the report to another agency: it starts there afresh, untaken."""
    await authorise(s, report, official, settings)
    if target.id == report.agency_id:
        raise Refused("bad_target", code=report.code)
    await _check_state(s, report, "reassign", official, lang)
    before = report.agency_id
    report.agency_id = target.id
    note = f"→ {target.code}: {reason.strip()}"
    try:
        await _transition(s, report, "reassign", now, official, note=note, lang=lang)
    except DeskError:  # pragma: no cover - _check_state saw the same state
        report.agency_id = before
        raise
    report.official_id = None
    # The competent agency starts afresh: its first level and a whole answer period.
    calendar = WorkCalendar(settings.workdays.extra_days_off, settings.workdays.makeup_working_days)
    days = settings.deadlines.answer_days_for(report.field, report.category)
    report.level = min(first_level(report), len(settings.ladder.levels) - 1)
    report.due_at = deadline(calendar, now, days)
    report.next_escalation_at = report.due_at
    report.next_reminder_at = next_reminder(settings, calendar, now, days, now)
    report.forward_due_at = forward_deadline(settings, calendar, report, now)
    old = await _agency_name(s, before)
    await announce(
        s,
        report,
        settings,
        now,
        f"Phản ánh {report.code} được chuyển đến {target.name} từ {old}.\n"
        f"Lý do: {shorten(reason, EXCERPT_CHARS)}",
    )
    await tell_citizen(s, report, now, "cz_reassigned", agency=target.name)


# ---------------------------------------------------------------- what citizens answer


async def citizen_confirms(s: AsyncSession, report: Report, now: datetime, lang: str) -> Reply:
    if report.status not in TRANSITIONS["confirm"][0]:
        return await _citizen_stale(report, lang)
    await transition(s, report, "confirm", now, "citizen")
    return say("cz_closed", lang, code=report.code), []


async def citizen_reopens(
    s: AsyncSession,
    report: Report,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
    lang: str,
) -> Reply:
    if report.status not in TRANSITIONS["reopen"][0]:
        return await _citizen_stale(report, lang)
    before = report.level
    await reopen(s, report, settings, calendar, now, note="người dân: vấn đề chưa được giải quyết")
    await announce(
        s,
        report,
        settings,
        now,
        f"Phản ánh {report.code} được mở lại: người dân cho biết vấn đề chưa được giải quyết. "
        "Đề nghị anh/chị xem xét, chỉ đạo xử lý.",
    )
    key = "cz_reopened_up" if report.level > before else "cz_reopened"
    due = local_date(report.due_at) if report.due_at else ""
    return say(key, lang, code=report.code, due=due), []


async def _citizen_stale(report: Report, lang: str) -> Reply:
    from bot.actions import REPORT_STATUS  # the citizen's words for a state

    names = REPORT_STATUS.get(report.status, {})
    return say("cz_stale", lang, code=report.code, status=names.get(lang, report.status)), []


# ---------------------------------------------------------------- the message path


@dataclass(frozen=True)
class _Tap:
    kind: str  # of | rc | bad
    verb: str = ""  # for "bad": which side it claimed to be (of | rc)
    report_id: int = 0
    agency_id: int = 0


def _tap_of(ev: EventRow) -> _Tap | None:
    """The desk payload this event carries (a button, or a text equal to one), if any."""
    if ev.kind == "button":
        raw = (ev.payload or "").strip()
    elif ev.kind == "text":
        raw = (ev.text or "").strip()
    else:
        return None
    if not raw.startswith(("of:", "rc:")):
        return None
    if m := _OF.fullmatch(raw):
        return _Tap("of", m[1], int(m[2]))
    if m := _OF_TO.fullmatch(raw):
        return _Tap("of", "to", int(m[1]), int(m[2]))
    if m := _RC.fullmatch(raw):
        return _Tap("rc", m[1], int(m[2]))
    return _Tap("bad", raw[:2])


def _set_waiting(conv: ConversationRow, value: dict[str, Any] | None) -> None:
    current = dict(conv.vars or {})
    if value is None:
        if DESK_VAR not in current:
            return
        current.pop(DESK_VAR)
    else:
        current[DESK_VAR] = value
    conv.vars = current  # a new dict: the JSON column sees the change


def _waiting(conv: ConversationRow, settings: Settings, now: datetime) -> dict[str, Any] | None:
    waiting = (conv.vars or {}).get(DESK_VAR)
    if not isinstance(waiting, dict) or not isinstance(waiting.get("report"), int):
        return None
    try:
        since = datetime.fromisoformat(str(waiting.get("at")))
    except ValueError:
        return None
    if now - since > timedelta(minutes=settings.conversation.idle_reset_minutes):
        return None
    return waiting


def concerns(conv: ConversationRow, ev: EventRow) -> bool:
    """Whether `handle` may have something to say to this event (a desk or "is it solved?"
    button, or text an official was asked for): the rest goes straight to the flows."""
    return DESK_VAR in (conv.vars or {}) or _tap_of(ev) is not None


async def handle(
    s: AsyncSession,
    conv: ConversationRow,
    ev: EventRow,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
) -> list[Reply] | None:
    """The desk's answer to this event, or None when it is not for the desk."""
    lang = _lang(conv.lang)
    tap = _tap_of(ev)
    if tap is not None and tap.kind == "bad" and tap.verb == "rc":
        return [(say("bad_button", lang), [])]
    if tap is None:
        if (conv.vars or {}).get(DESK_VAR) is None:
            return None
        waiting = _waiting(conv, settings, now)
        if waiting is None or ev.kind in ("start", "button"):
            _set_waiting(conv, None)  # expired, or the official went elsewhere
            return None
        return await _typed(s, conv, ev, waiting, settings, now, lang)
    if tap.kind == "rc":
        return [await _citizen_tap(s, conv, tap, settings, calendar, now, lang)]
    _set_waiting(conv, None)  # any desk tap replaces a pending reply or reason
    official = await official_of(s, conv.channel, conv.user_key)
    if official is None:
        return [(say("not_official", lang), [])]
    if tap.kind == "bad":
        log.warning("official %s sent a malformed desk payload", official.id)
        return [(say("bad_button", lang), [])]
    report = await load_report(s, tap.report_id)
    if report is None:
        return [(say("not_found", lang), [])]
    try:
        return await _official_tap(s, conv, official, report, tap, settings, now, lang)
    except DeskError as exc:
        return [(exc.text(lang), exc.buttons)]


async def _official_tap(
    s: AsyncSession,
    conv: ConversationRow,
    official: Official,
    report: Report,
    tap: _Tap,
    settings: Settings,
    now: datetime,
    lang: str,
) -> list[Reply]:
    await authorise(s, report, official, settings)
    code = report.code
    if tap.verb == "open":
        return [await report_view(s, report, lang)]
    if tap.verb == "cancel":
        return [(say("cancelled", lang), action_buttons(report, lang))]
    if tap.verb == "accept":
        await accept(s, report, official, settings, now, lang)
        due = local_date(report.due_at) if report.due_at else "—"
        return [(say("accepted", lang, code=code, due=due), action_buttons(report, lang))]
    if tap.verb == "resolve":
        await resolve(s, report, official, settings, now, lang)
        return [(say("resolved", lang, code=code), [])]
    if tap.verb == "reply":
        await _check_state(s, report, "reply", official, lang)
        _set_waiting(conv, {"await": "reply", "report": report.id, "at": now.isoformat()})
        return [(say("ask_reply", lang, code=code), [_cancel_button(report, lang)])]
    await _check_state(s, report, "reassign", official, lang)
    if tap.verb == "reassign":
        targets = await reassign_targets(s, report)
        if not targets:
            return [(say("no_targets", lang, code=code), [])]
        buttons = [{"payload": f"of:to:{report.id}:{a.id}", "title": a.name} for a in targets]
        return [(say("pick_target", lang, code=code), [*buttons, _cancel_button(report, lang)])]
    # of:to:<report>:<agency>
    allowed = await reassign_targets(s, report, limit=None)
    target = next((a for a in allowed if a.id == tap.agency_id), None)
    if target is None:
        raise Refused("bad_target", code=code)
    waiting = {"await": "reason", "report": report.id, "to": target.id, "at": now.isoformat()}
    _set_waiting(conv, waiting)
    return [
        (say("ask_reason", lang, code=code, agency=target.name), [_cancel_button(report, lang)])
    ]


async def _typed(
    s: AsyncSession,
    conv: ConversationRow,
    ev: EventRow,
    waiting: dict[str, Any],
    settings: Settings,
    now: datetime,
    lang: str,
) -> list[Reply] | None:
    """The text an official typed after "Trả lời" (the answer) or a target (the reason)."""
    if ev.kind != "text":
        return [(say("need_text", lang), [])]
    text = (ev.text or "").strip()
    folded = fold(text)
    if folded in _MENU:
        _set_waiting(conv, None)
        return None  # the menu, as asked
    if folded in _CANCEL:
        _set_waiting(conv, None)
        return [(say("cancelled", lang), [])]
    if not folded:
        return [(say("need_text", lang), [])]
    limit = settings.conversation.max_text_chars
    if waiting.get("await") == "reason":
        limit = min(limit, MAX_REASON_CHARS)
    if len(text) > limit:
        return [(say("too_long", lang, limit=limit), [])]
    _set_waiting(conv, None)
    official = await official_of(s, conv.channel, conv.user_key)
    if official is None:
        return [(say("not_official", lang), [])]
    report = await load_report(s, waiting["report"])
    if report is None:
        return [(say("not_found", lang), [])]
    try:
        if waiting.get("await") == "reply":
            await reply(s, report, official, text, settings, now, lang)
            return [(say("replied", lang, code=report.code), action_buttons(report, lang))]
        if waiting.get("await") == "reason":
            await authorise(s, report, official, settings)
            allowed = await reassign_targets(s, report, limit=None)
            target = next((a for a in allowed if a.id == waiting.get("to")), None)
            if target is None:
                raise Refused("bad_target", code=report.code)
            await reassign(s, report, official, target, text, settings, now, lang)
            return [(say("reassigned", lang, code=report.code, agency=target.name), [])]
    except DeskError as exc:
        return [(exc.text(lang), exc.buttons)]
    return None


async def _citizen_tap(
    s: AsyncSession,
    conv: ConversationRow,
    tap: _Tap,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
    lang: str,
) -> Reply:
    """A citizen's "Đã giải quyết" / "Chưa", for their own report only."""
    report = await load_report(s, tap.report_id)
    if report is None or report.citizen_id != conv.citizen_id:
        return say("cz_not_found", lang), []
    if tap.verb == "yes":
        return await citizen_confirms(s, report, now, lang)
    return await citizen_reopens(s, report, settings, calendar, now, lang)
