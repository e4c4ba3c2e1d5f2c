"""Flow versions: publish, roll back; a conversation finishes on the version it began."""

from __future__ import annotations

import copy

import pytest
from sqlmodel import select

from bot.app import Service
from bot.clock import ManualClock
from bot.flowstore import configured_lists, publish, read_flow_files, rollback, seed_flows
from flows.validate import FlowInvalid
from storage.models import Flow, FlowVersion, Rating
from tests.chat import ChatClient, texts
from tests.factories import COMPLETED, COMPLETED_2, small_province


@pytest.fixture
async def province(service: Service, clock: ManualClock) -> dict[str, int]:
    async with service.db.transaction() as s:
        return await small_province(s, clock.now())


def rating_v2() -> dict:
    flow = copy.deepcopy(read_flow_files()["rating"])
    flow["steps"]["thanks"]["say"] = {"vi": "Xin cảm ơn (phiên bản 2)!", "en": "Thanks (v2)!"}
    return flow


async def test_a_conversation_under_way_finishes_on_its_version(
    service: Service, province: dict[str, int], chat: ChatClient, clock: ManualClock
) -> None:
    await chat.say(COMPLETED)
    await chat.tap("Hài lòng")
    async with service.db.transaction() as s:
        v2 = await publish(
            s, rating_v2(), "admin@tinh", clock.now(), configured_lists(service.settings)
        )
    assert v2.version == 2
    for _ in range(4):
        await chat.tap("Hài lòng")
    done = await chat.tap("Bỏ qua")
    assert "Cảm ơn anh/chị đã dành thời gian đánh giá" in texts(done)  # still v1

    # A new rating starts on v2.
    await chat.say(COMPLETED_2)
    for _ in range(5):
        await chat.tap("Hài lòng")
    done = await chat.tap("Bỏ qua")
    assert "Xin cảm ơn (phiên bản 2)!" in texts(done)

    # Roll back to v1: new conversations get v1 again.
    async with service.db.transaction() as s:
        await rollback(s, "rating", 1, "admin@tinh", clock.now())
        flow = await s.get(Flow, "rating")
        current = await s.get(FlowVersion, flow.current_version_id)  # type: ignore[union-attr]
        assert current is not None and current.version == 1
        assert len((await s.exec(select(Rating))).all()) == 2


async def test_an_invalid_flow_is_not_published(
    service: Service, province: dict[str, int], clock: ManualClock
) -> None:
    broken = rating_v2()
    broken["steps"]["thanks"]["goto"] = "nowhere"
    async with service.db.transaction() as s:
        await seed_flows(s, service.settings, clock.now())
        with pytest.raises(FlowInvalid, match="step thanks goto: goes to unknown step 'nowhere'"):
            await publish(s, broken, "admin", clock.now(), configured_lists(service.settings))
        versions = (await s.exec(select(FlowVersion).where(FlowVersion.flow_id == "rating"))).all()
    assert [v.version for v in versions] == [1]


async def test_seeding_twice_publishes_nothing_new(service: Service, clock: ManualClock) -> None:
    async with service.db.transaction() as s:
        first = await seed_flows(s, service.settings, clock.now())
        second = await seed_flows(s, service.settings, clock.now())
    assert sorted(first) == ["feedback", "main", "rating", "status"]
    assert second == []
