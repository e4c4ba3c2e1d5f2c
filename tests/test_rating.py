"""A citizen rates a completed dossier in the web chat, end to end."""

from __future__ import annotations

import pytest
from sqlalchemy import func
from sqlmodel import select

from bot.app import Service
from bot.stats import satisfaction
from storage.models import InboxEvent, OutboxMessage, Rating, RatingAnswer, Report
from storage.ops import insert_rating
from tests.chat import ChatClient, question, texts
from tests.factories import COMPLETED, COMPLETED_2, IN_PROGRESS, small_province


@pytest.fixture
async def province(service: Service, clock) -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with service.db.transaction() as s:
        return await small_province(s, clock.now())


async def rate_all(chat: ChatClient, level: str) -> None:
    for _ in range(5):
        await chat.tap(level)


async def test_citizen_rates_a_completed_dossier_and_the_summary_agrees(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    greeting = await chat.start()
    assert "Xin chào" in texts(greeting)
    assert [b["title"] for b in chat.buttons()] == [
        "Đánh giá hồ sơ",
        "Gửi phản ánh, kiến nghị",
        "Tra cứu phản ánh",
        "Hướng dẫn",
    ]

    asked = await chat.tap("Đánh giá hồ sơ")
    assert "nhập mã hồ sơ" in texts(asked)

    intro = await chat.say(f"  {COMPLETED.lower()} ")
    assert "Đăng ký biến động quyền sử dụng đất" in texts(intro)
    assert "UBND phường Việt Trì" in texts(intro)
    assert question(intro[-1]).startswith("(1/5) Thời gian giải quyết")
    assert [b["title"] for b in intro[-1]["buttons"]] == [
        "Rất không hài lòng",
        "Không hài lòng",
        "Bình thường",
        "Hài lòng",
        "Rất hài lòng",
    ]

    await chat.tap("Rất hài lòng")
    await chat.tap("Hài lòng")
    await chat.tap("Hài lòng")
    await chat.tap("Bình thường")
    comment_q = await chat.tap("Rất hài lòng")
    assert "góp ý" in texts(comment_q)

    thanks = await chat.say("Cán bộ hướng dẫn nhiệt tình, cảm ơn.")
    assert "Cảm ơn anh/chị đã dành thời gian đánh giá" in texts(thanks)

    async with service.db.sessions() as s:
        rating = (await s.exec(select(Rating))).one()
        assert rating.comment == "Cán bộ hướng dẫn nhiệt tình, cảm ơn."
        answers = {a.criterion: (a.value, a.counts_as) for a in await s.exec(select(RatingAnswer))}
        assert answers == {
            "time": (5, "satisfied"),
            "visits": (4, "satisfied"),
            "attitude": (4, "satisfied"),
            "clarity": (3, "neutral"),
            "overall": (5, "satisfied"),
        }
        total, by_agency = await satisfaction(s, "agency")
        assert (total.ratings, total.answers, total.satisfied, total.rate) == (1, 5, 4, 80.0)
        assert [(ln.key, ln.rate) for ln in by_agency] == [("H42.15.01", 80.0)]
        sent = (await s.exec(select(func.count()).where(OutboxMessage.status == "sent"))).one()
        assert sent == len(chat.history)
        assert not (await s.exec(select(Report))).all()


async def test_a_dossier_is_rated_only_once(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.say(COMPLETED)
    await rate_all(chat, "Hài lòng")
    await chat.tap("Bỏ qua")
    again = await chat.say(COMPLETED)
    assert "đã được đánh giá" in texts(again)
    assert "Mỗi hồ sơ chỉ được đánh giá một lần" in texts(again)
    async with service.db.sessions() as s:
        assert len((await s.exec(select(Rating))).all()) == 1


async def test_a_rating_stored_twice_for_one_dossier_keeps_the_first_and_its_answers(
    service: Service, province: dict[str, int], chat: ChatClient, clock
) -> None:  # type: ignore[no-untyped-def]
    """The storing itself (one statement on PostgreSQL, two on SQLite): a second rating
    of the dossier, as when two conversations finish it at once, stores nothing."""
    await chat.say(COMPLETED)
    await rate_all(chat, "Hài lòng")
    await chat.tap("Bỏ qua")
    async with service.db.sessions() as s:
        first = (await s.exec(select(Rating))).one()
    values = {
        "dossier_id": first.dossier_id,
        "citizen_id": first.citizen_id,
        "channel": "zalo",
        "comment": "lần hai",
        "created_at": clock.now(),
    }
    answer = {"criterion": "time", "value": 1, "label": "Rất không hài lòng"}
    async with service.db.transaction() as s:
        again = await insert_rating(s, values, [{**answer, "counts_as": "unsatisfied"}])
    assert again is None
    async with service.db.sessions() as s:
        assert [r.id for r in (await s.exec(select(Rating))).all()] == [first.id]
        answers = (await s.exec(select(RatingAnswer))).all()
    assert len(answers) == 5
    assert {(a.rating_id, a.label, a.counts_as) for a in answers} == {
        (first.id, "Hài lòng", "satisfied")
    }


async def test_dossiers_looked_up_ahead_for_a_batch_answer_as_one_lookup_and_a_rating_renews_them(
    service: Service, province: dict[str, int], clock
) -> None:  # type: ignore[no-untyped-def]
    """A batch looks up the codes its citizens typed in one statement: each code (typed
    loosely, unknown, not completed) gets the outcome its own lookup would give; once a
    conversation of the batch rates a dossier, the next lookup of it says it is rated."""
    from bot.actions import ActionContext, find_dossier, look_up_dossiers, save_rating
    from storage.models import Citizen

    typed = [f"mã hs: {COMPLETED.lower()}", IN_PROGRESS, "H42.99.99-261110-9999", "menu"]

    def context(s, dossiers, vars=None):  # type: ignore[no-untyped-def]
        return ActionContext(
            s, service.settings, citizen.id, "zalo", "u1", clock.now(), vars or {},
            service.calendar, dossiers,
        )  # fmt: skip

    async with service.db.transaction() as s:
        citizen = Citizen(created_at=clock.now())
        s.add(citizen)
        await s.flush()
        ahead = await look_up_dossiers(s, typed)
        assert set(ahead) == {COMPLETED, IN_PROGRESS, "H42.99.99-261110-9999"}
        for text in typed[:3]:
            own = await find_dossier(context(s, None), {"code": text})
            assert await find_dossier(context(s, ahead), {"code": text}) == own
        ready = await find_dossier(context(s, ahead), {"code": typed[0]})
        assert [ready.outcome, ready.vars["dossier"]["code"]] == ["ready", COMPLETED]
        answers = {c.key: "5" for c in service.settings.rating.criteria}
        vars = {**ready.vars, "answers": answers}
        assert (await save_rating(context(s, ahead, vars), {})).outcome == "saved"
        again = await find_dossier(context(s, ahead), {"code": typed[0]})
        assert again.outcome == "already_rated"


async def test_dissatisfied_rating_offers_to_turn_the_comment_into_feedback(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.say(f"ma ho so cua toi la {COMPLETED_2} a")
    await rate_all(chat, "Không hài lòng")
    offer = await chat.say("Phải đi lại 4 lần mới xong, cán bộ hẹn mãi không trả.")
    assert "Rất tiếc" in texts(offer)
    done = await chat.tap("Có, gửi phản ánh")
    async with service.db.sessions() as s:
        report = (await s.exec(select(Report))).one()
    assert report.text == "Phải đi lại 4 lần mới xong, cán bộ hẹn mãi không trả."
    assert report.code.startswith("PAKN.20261123.")
    assert report.code in texts(done)
    assert report.source == "rating" and report.field == "land" and report.status == "assigned"


async def test_unknown_malformed_and_unfinished_dossiers_get_a_clear_answer_and_a_retry(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.start()
    await chat.tap("Đánh giá hồ sơ")
    malformed = await chat.say("12345")
    assert "chưa đúng dạng mã hồ sơ" in texts(malformed)
    unknown = await chat.say("H42.15.01-261001-9999")
    assert "Không tìm thấy hồ sơ mã H42.15.01-261001-9999" in texts(unknown)
    impossible_date = await chat.say("H42.15.01-261345-0001")
    assert "chưa đúng dạng" in texts(impossible_date)
    unfinished = await chat.say(IN_PROGRESS)
    assert "đang được giải quyết" in texts(unfinished)
    assert "hẹn trả kết quả ngày" in texts(unfinished)
    # Still able to rate another one right away.
    intro = await chat.say(COMPLETED)
    assert question(intro[-1]).startswith("(1/5)")
    async with service.db.sessions() as s:
        assert not (await s.exec(select(Rating))).all()


async def test_deep_link_opens_the_rating_of_that_dossier(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    page = await chat.open(f"?start={COMPLETED}")
    assert f'data-start="{COMPLETED}"' in page
    intro = await chat.start(COMPLETED)
    assert COMPLETED in texts(intro)
    assert question(intro[-1]).startswith("(1/5)")


async def test_replaying_the_same_message_id_changes_nothing(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.say(COMPLETED)
    first = await chat.post(
        {
            "id": "tap-once-0001",
            "payload": "5",
            "title": "Rất hài lòng",
            "turn": chat.current_turn(),
        }
    )
    assert first == {"accepted": True, "duplicate": False}
    after_first = await chat.replies()
    again = await chat.post(
        {
            "id": "tap-once-0001",
            "payload": "5",
            "title": "Rất hài lòng",
            "turn": chat.current_turn(),
        }
    )
    assert again == {"accepted": True, "duplicate": True}
    assert await chat.replies() == []
    assert question(after_first[-1]).startswith("(2/5)")
    async with service.db.sessions() as s:
        events = (await s.exec(select(func.count()).select_from(InboxEvent))).one()
    assert events == 2
