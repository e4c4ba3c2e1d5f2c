"""Rows for tests: a small province with a few dossiers in known states."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Agency, Dossier, Official, Procedure, Route

COMPLETED = "H42.15.01-261110-0001"
COMPLETED_2 = "H42.15.01-261111-0002"
IN_PROGRESS = "H42.15.01-261118-0003"
POLICE_DONE = "000.00.10.H42-261105-0004"


async def small_province(s: AsyncSession, now: datetime) -> dict[str, int]:
    """A province, a ward, the police; two procedures; dossiers: 3 completed, 1 in progress."""
    province = Agency(
        code="000.00.00.H42",
        name="UBND tỉnh Phú Thọ",
        kind="province",
        head_title="Chủ tịch UBND tỉnh",
    )
    s.add(province)
    await s.flush()
    ward = Agency(
        code="H42.15.01",
        name="UBND phường Việt Trì",
        kind="commune",
        parent_id=province.id,
        head_title="Chủ tịch UBND phường",
    )
    police = Agency(
        code="000.00.10.H42",
        name="Công an tỉnh Phú Thọ",
        kind="police",
        parent_id=province.id,
        head_title="Giám đốc Công an tỉnh",
    )
    s.add_all([ward, police])
    await s.flush()
    s.add_all(
        [
            Official(
                agency_id=ward.id, name="Nguyễn Văn Hùng", title="Chủ tịch UBND phường", role="head"
            ),
            Official(
                agency_id=police.id,
                name="Trần Quốc Bảo",
                title="Giám đốc Công an tỉnh",
                role="head",
            ),
        ]
    )
    land = Procedure(
        code="1.004227",
        name="Đăng ký biến động quyền sử dụng đất",
        field="land",
        time_limit_days=10,
    )
    lltp = Procedure(
        code="2.000488",
        name="Cấp Phiếu lý lịch tư pháp cho công dân Việt Nam",
        field="judicial_records",
        time_limit_days=10,
    )
    s.add_all([land, lltp])
    await s.flush()

    def dossier(code: str, proc: Procedure, agency: Agency, days_ago: int, done: bool) -> Dossier:
        received = now - timedelta(days=days_ago)
        return Dossier(
            code=code,
            procedure_id=proc.id,
            agency_id=agency.id,
            received_at=received,
            due_at=received + timedelta(days=14),
            completed_at=now - timedelta(days=1) if done else None,
            status="completed" if done else "received",
            updated_at=now,
            citizen_name="Lê Thị Mai",
            citizen_phone="0912345678",
        )

    s.add_all(
        [
            dossier(COMPLETED, land, ward, 13, True),
            dossier(COMPLETED_2, land, ward, 12, True),
            dossier(IN_PROGRESS, land, ward, 5, False),
            dossier(POLICE_DONE, lltp, police, 18, True),
        ]
    )
    await s.flush()
    return {"province": province.id, "ward": ward.id, "police": police.id}  # type: ignore[dict-item]


async def routing(s: AsyncSession, ids: dict[str, int]) -> dict[str, int]:
    """The ward's economic office, a second commune, the land office, and routing rules.

    land × ward → ward economic office; land elsewhere → land registration office;
    construction × ward → ward economic office; judicial records → police;
    other → the province.
    """
    econ = Agency(
        code="H42.15.01.01",
        name="Phòng Kinh tế, Hạ tầng và Đô thị phường Việt Trì",
        kind="unit",
        parent_id=ids["ward"],
        head_title="Trưởng phòng",
    )
    tam_dao = Agency(
        code="H42.55",
        name="UBND xã Tam Đảo",
        kind="commune",
        parent_id=ids["province"],
        head_title="Chủ tịch UBND xã",
    )
    land_office = Agency(
        code="H42.10.01",
        name="Văn phòng Đăng ký đất đai tỉnh Phú Thọ",
        kind="unit",
        parent_id=ids["province"],
        head_title="Giám đốc Văn phòng Đăng ký đất đai",
    )
    s.add_all([econ, tam_dao, land_office])
    await s.flush()
    s.add_all(
        [
            Route(field="land", commune_id=ids["ward"], agency_id=econ.id),
            Route(field="land", commune_id=None, agency_id=land_office.id),
            Route(field="construction", commune_id=ids["ward"], agency_id=econ.id),
            Route(field="judicial_records", commune_id=None, agency_id=ids["police"]),
            Route(field="other", commune_id=None, agency_id=ids["province"]),
        ]
    )
    await s.flush()
    return {**ids, "econ": econ.id, "tam_dao": tam_dao.id, "land_office": land_office.id}  # type: ignore[dict-item]
