"""Demo data: a province after the 2025 reform, with dossiers and ratings to try the bot on.

Tỉnh Phú Thọ (merged on 1 July 2025 with Vĩnh Phúc and Hòa Bình), two tiers: the province
with its departments, the land registration office and the provincial police, and a few
communes/wards with their economic office and public-service centre. Agency codes follow
one scheme, ``H42`` for the province, ``H42.NN`` for its direct bodies and ``H42.NN.MM`` for
their units; dossier codes are ``<agency code>-YYMMDD-NNNN``.

Everything is generated from a seed and placed relative to `now`, so the same seed gives
the same data and there are always dossiers completed in the last few days. All people
(officials, citizens, phone numbers) are fictional; procedure codes only look like the
national catalogue's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import VIETNAM
from bot.config import ScaleLevel, Settings
from bot.dossiers import end_of_day
from bot.workdays import WorkCalendar
from storage.models import (
    Agency,
    Citizen,
    Dossier,
    FieldOfWork,
    Official,
    Procedure,
    Rating,
    RatingAnswer,
    Route,
)

DOSSIER_COUNT = 400
CITIZEN_COUNT = 18
WINDOW_DAYS = 90
PROVINCE = "H42"

# ---------------------------------------------------------------- static content

FIELDS: list[tuple[str, str, str]] = [
    ("land", "Đất đai", "Land"),
    ("construction", "Xây dựng", "Construction"),
    ("judicial_records", "Lý lịch tư pháp", "Judicial records"),
    ("other", "Lĩnh vực khác", "Other"),
]


@dataclass(frozen=True)
class AgencySpec:
    """One agency of the demo tree; `key` names it inside this module only."""

    key: str
    code: str
    name: str
    kind: str
    parent: str | None
    head_title: str
    officer_titles: tuple[str, ...]


# (name, is ward, weight of its dossiers)
COMMUNES: list[tuple[str, bool, float]] = [
    ("Việt Trì", True, 1.4),
    ("Vĩnh Phúc", True, 1.3),
    ("Hòa Bình", True, 1.1),
    ("Phúc Yên", True, 1.0),
    ("Tam Đảo", False, 0.6),
    ("Thanh Sơn", False, 0.6),
]


def _agency_specs() -> list[AgencySpec]:
    """The agency tree, parents before children."""
    dept = ("Chuyên viên", "Chuyên viên tiếp nhận hồ sơ")
    specs = [
        AgencySpec(
            "province", PROVINCE, "UBND tỉnh Phú Thọ", "province", None, "Chủ tịch UBND tỉnh", ()
        ),
        AgencySpec(
            "office",
            "H42.01",
            "Văn phòng UBND tỉnh Phú Thọ",
            "office",
            "province",
            "Chánh Văn phòng UBND tỉnh",
            ("Chuyên viên tiếp nhận phản ánh, kiến nghị", "Chuyên viên Văn phòng"),
        ),
        AgencySpec(
            "so_nnmt",
            "H42.10",
            "Sở Nông nghiệp và Môi trường tỉnh Phú Thọ",
            "department",
            "province",
            "Giám đốc Sở",
            dept,
        ),
        AgencySpec(
            "vpdk",
            "H42.10.01",
            "Văn phòng Đăng ký đất đai tỉnh Phú Thọ",
            "unit",
            "so_nnmt",
            "Giám đốc Văn phòng Đăng ký đất đai",
            ("Viên chức đăng ký đất đai", "Viên chức tiếp nhận hồ sơ"),
        ),
        AgencySpec(
            "vpdk_viettri",
            "H42.10.02",
            "Chi nhánh Văn phòng Đăng ký đất đai khu vực Việt Trì",
            "unit",
            "vpdk",
            "Giám đốc Chi nhánh Văn phòng Đăng ký đất đai",
            (
                "Viên chức đăng ký đất đai",
                "Viên chức đo đạc địa chính",
                "Viên chức tiếp nhận hồ sơ",
            ),
        ),
        AgencySpec(
            "vpdk_hoabinh",
            "H42.10.03",
            "Chi nhánh Văn phòng Đăng ký đất đai khu vực Hòa Bình",
            "unit",
            "vpdk",
            "Giám đốc Chi nhánh Văn phòng Đăng ký đất đai",
            (
                "Viên chức đăng ký đất đai",
                "Viên chức đo đạc địa chính",
                "Viên chức tiếp nhận hồ sơ",
            ),
        ),
        AgencySpec(
            "so_xd",
            "H42.11",
            "Sở Xây dựng tỉnh Phú Thọ",
            "department",
            "province",
            "Giám đốc Sở",
            dept,
        ),
        AgencySpec(
            "so_tp",
            "H42.12",
            "Sở Tư pháp tỉnh Phú Thọ",
            "department",
            "province",
            "Giám đốc Sở",
            dept,
        ),
        AgencySpec(
            "so_tc",
            "H42.13",
            "Sở Tài chính tỉnh Phú Thọ",
            "department",
            "province",
            "Giám đốc Sở",
            ("Chuyên viên Phòng Đăng ký kinh doanh", "Chuyên viên tiếp nhận hồ sơ"),
        ),
        AgencySpec(
            "police",
            "H42.20",
            "Công an tỉnh Phú Thọ",
            "police",
            "province",
            "Giám đốc Công an tỉnh",
            (
                "Cán bộ Phòng Hồ sơ nghiệp vụ",
                "Cán bộ Phòng Cảnh sát giao thông",
                "Cán bộ Phòng Cảnh sát quản lý hành chính về trật tự xã hội",
            ),
        ),
    ]
    for i, (name, ward, _) in enumerate(COMMUNES, 1):
        level = "phường" if ward else "xã"
        key = f"c{i}"
        code = f"H42.{50 + i}"
        econ = "Phòng Kinh tế, Hạ tầng và Đô thị" if ward else "Phòng Kinh tế"
        specs += [
            AgencySpec(
                key,
                code,
                f"UBND {level} {name}",
                "commune",
                "province",
                f"Chủ tịch UBND {level}",
                (),
            ),
            AgencySpec(
                f"{key}_econ",
                f"{code}.01",
                f"{econ} {level} {name}",
                "unit",
                key,
                f"Trưởng {econ[0].lower()}{econ[1:]}",
                ("Công chức Địa chính - Xây dựng", "Chuyên viên " + econ),
            ),
            AgencySpec(
                f"{key}_desk",
                f"{code}.02",
                f"Trung tâm Phục vụ hành chính công {level} {name}",
                "unit",
                key,
                "Giám đốc Trung tâm Phục vụ hành chính công",
                ("Công chức tiếp nhận hồ sơ", "Công chức Tư pháp - Hộ tịch"),
            ),
        ]
    return specs


@dataclass(frozen=True)
class ProcedureSpec:
    """A procedure, how often it comes up, and which agencies handle it."""

    code: str
    name: str
    field: str
    days: int
    weight: float
    handlers: str  # a key of HANDLERS


BRANCHES = ["vpdk_viettri", "vpdk_hoabinh"]
# Communes served by the Hòa Bình branch of the land registration office (the rest: Việt Trì).
LAND_BRANCH_HOA_BINH = ("Hòa Bình", "Thanh Sơn")
ECON = [f"c{i}_econ" for i in range(1, len(COMMUNES) + 1)]
DESK = [f"c{i}_desk" for i in range(1, len(COMMUNES) + 1)]
HANDLERS: dict[str, list[str]] = {
    "branches": BRANCHES,
    "vpdk": ["vpdk", *BRANCHES],
    "econ": ECON,
    "desk": DESK,
    "so_nnmt": ["so_nnmt"],
    "so_xd": ["so_xd"],
    "so_tp": ["so_tp"],
    "so_tc": ["so_tc"],
    "police": ["police"],
}

# fmt: off
P = ProcedureSpec
PROCEDURES: list[ProcedureSpec] = [
    # land
    P(
        "1.004227",
        "Đăng ký biến động quyền sử dụng đất, quyền sở hữu tài sản gắn liền với đất do "
        "chuyển nhượng, tặng cho, thừa kế",
        "land", 10, 14, "branches",
    ),
    P(
        "1.004221",
        "Cấp đổi Giấy chứng nhận quyền sử dụng đất, quyền sở hữu tài sản gắn liền với đất",
        "land", 7, 6, "branches",
    ),
    P(
        "1.004269",
        "Đăng ký đất đai, tài sản gắn liền với đất lần đầu, cấp Giấy chứng nhận cho cá nhân",
        "land", 20, 5, "econ",
    ),
    P("1.004203", "Tách thửa hoặc hợp thửa đất", "land", 15, 5, "branches"),
    P(
        "1.004206",
        "Chuyển mục đích sử dụng đất phải được phép của cơ quan nhà nước có thẩm quyền "
        "đối với cá nhân",
        "land", 15, 4, "econ",
    ),
    P(
        "1.004213",
        "Xóa đăng ký thế chấp quyền sử dụng đất, tài sản gắn liền với đất",
        "land", 3, 5, "branches",
    ),
    P(
        "1.012790",
        "Đăng ký thế chấp quyền sử dụng đất, tài sản gắn liền với đất",
        "land", 3, 6, "branches",
    ),
    P("1.004199", "Đính chính Giấy chứng nhận đã cấp", "land", 10, 2, "vpdk"),
    P(
        "2.000889",
        "Giao đất, cho thuê đất đối với tổ chức không thông qua đấu giá quyền sử dụng đất",
        "land", 20, 1, "so_nnmt",
    ),
    # construction
    P(
        "1.009994",
        "Cấp giấy phép xây dựng mới đối với nhà ở riêng lẻ",
        "construction", 15, 8, "econ",
    ),
    P(
        "1.009995",
        "Cấp giấy phép sửa chữa, cải tạo đối với nhà ở riêng lẻ",
        "construction", 15, 3, "econ",
    ),
    P(
        "1.009996",
        "Điều chỉnh giấy phép xây dựng đối với nhà ở riêng lẻ",
        "construction", 10, 2, "econ",
    ),
    P("1.009997", "Gia hạn giấy phép xây dựng", "construction", 5, 1, "econ"),
    P(
        "1.009972",
        "Cấp chứng chỉ hành nghề hoạt động xây dựng hạng II, hạng III",
        "construction", 20, 2, "so_xd",
    ),
    P(
        "1.009973",
        "Cấp giấy phép xây dựng mới đối với công trình cấp II, cấp III",
        "construction", 20, 1, "so_xd",
    ),
    P(
        "1.009984",
        "Cấp chứng chỉ năng lực hoạt động xây dựng hạng II, hạng III",
        "construction", 20, 1, "so_xd",
    ),
    # judicial records: Công an tỉnh since 1 March 2025
    P(
        "2.000488",
        "Cấp Phiếu lý lịch tư pháp cho công dân Việt Nam",
        "judicial_records", 10, 8, "police",
    ),
    P(
        "2.000635",
        "Cấp Phiếu lý lịch tư pháp cho người nước ngoài đã hoặc đang cư trú tại Việt Nam",
        "judicial_records", 10, 1, "police",
    ),
    P("2.000505", "Cấp Phiếu lý lịch tư pháp số 2", "judicial_records", 10, 2, "police"),
    P(
        "1.013125",
        "Cấp Phiếu lý lịch tư pháp qua ứng dụng VNeID",
        "judicial_records", 10, 6, "police",
    ),
    # other
    P("1.001193", "Đăng ký khai sinh", "other", 1, 10, "desk"),
    P("1.000894", "Đăng ký kết hôn", "other", 3, 5, "desk"),
    P("1.000656", "Đăng ký khai tử", "other", 1, 4, "desk"),
    P("2.000815", "Chứng thực bản sao từ bản chính giấy tờ, văn bản", "other", 1, 10, "desk"),
    P("2.000575", "Đăng ký thành lập hộ kinh doanh", "other", 3, 4, "econ"),
    P(
        "2.002042",
        "Đăng ký thành lập công ty trách nhiệm hữu hạn một thành viên",
        "other", 3, 4, "so_tc",
    ),
    P("2.002049", "Đăng ký thay đổi nội dung đăng ký doanh nghiệp", "other", 3, 3, "so_tc"),
    P(
        "1.002804",
        "Đổi giấy phép lái xe do ngành Công an cấp",
        "other", 5, 6, "police",
    ),
    P("1.004194", "Đăng ký thường trú", "other", 7, 5, "police"),
    P("1.001665", "Cấp Thẻ công chứng viên", "other", 10, 1, "so_tp"),
    P("2.001050", "Đăng ký hành nghề luật sư với tư cách cá nhân", "other", 7, 1, "so_tp"),
]
del P
# fmt: on

# Procedure code, agency key, working days late (0: on time) of the codes to try.
TRY: list[tuple[str, str, int]] = [
    ("1.004227", "vpdk_viettri", 0),
    ("1.009994", "c2_econ", 0),
    ("2.000488", "police", 0),
    ("1.001193", "c5_desk", 0),
    ("1.004221", "vpdk_hoabinh", 2),
]
PENDING = ("1.004227", "vpdk_viettri")

# Chance a rater is happy overall, by field; late-completed dossiers do worse.
HAPPY = {"land": 0.78, "construction": 0.86, "judicial_records": 0.92, "other": 0.95}
LATE_PENALTY = 0.35

FAMILY = (
    ["Nguyễn"] * 8
    + ["Trần"] * 3
    + ["Lê"] * 3
    + ["Phạm"] * 2
    + ["Hoàng"] * 2
    + ["Vũ"] * 2
    + ["Đặng", "Bùi", "Bùi", "Đỗ", "Ngô", "Dương", "Phan", "Hà", "Đinh", "Quách", "Cao", "Tạ"]
)
MIDDLE_M = ["Văn", "Văn", "Đức", "Minh", "Quang", "Hữu", "Xuân", "Tiến", "Mạnh", "Duy", "Thế"]
MIDDLE_F = ["Thị", "Thị", "Thị", "Thu", "Ngọc", "Thanh", "Minh", "Thùy", "Phương", "Hồng"]
GIVEN_M = [
    "Hùng", "Dũng", "Tuấn", "Long", "Quân", "Sơn", "Thắng", "Hải", "Nam", "Cường", "Trung",
    "Hiếu", "Khánh", "Phong", "Toàn", "Tùng", "Việt", "Bình", "Thành", "Huy", "Đạt", "Kiên",
]  # fmt: skip
GIVEN_F = [
    "Lan", "Hương", "Hoa", "Mai", "Hằng", "Thảo", "Trang", "Huyền", "Linh", "Nga", "Yến",
    "Dung", "Phương", "Hà", "Vân", "Loan", "Oanh", "Nhung", "Thủy", "Hạnh", "Chi", "Ngân",
]  # fmt: skip
PHONE_PREFIXES = [
    "032", "033", "034", "035", "036", "037", "038", "039", "086", "096", "097", "098",
    "081", "082", "083", "084", "085", "088", "091", "094", "070", "076", "077", "078",
    "079", "089", "090", "093", "056", "058",
]  # fmt: skip

GOOD_COMMENTS: dict[str, list[str]] = {
    "any": [
        "Cán bộ hướng dẫn nhiệt tình, trả kết quả đúng hẹn. Cảm ơn!",
        "Thủ tục nhanh gọn, không phải đi lại nhiều.",
        "can bo nhiet tinh, huong dan ro rang, cam on",
        "Tốt, đúng hẹn.",
        "ok, nhanh hon minh nghi",
        "Được nhắn tin báo kết quả qua điện thoại, rất tiện.",
    ],
    "land": ["Sang tên sổ đỏ lần này nhanh hơn trước nhiều, cán bộ chi nhánh làm việc chu đáo."],
    "construction": ["Xin giấy phép xây nhà được hướng dẫn kỹ, đúng hẹn."],
    "judicial_records": [
        "Làm lý lịch tư pháp trên VNeID tiện quá, không phải lên tỉnh.",
        "lam lltp nhanh, dung hen",
    ],
    "other": [
        "Làm khai sinh cho cháu chỉ mất buổi sáng, rất hài lòng.",
        "Trung tâm hành chính công xã mới sạch sẽ, cán bộ vui vẻ.",
    ],
}
BAD_COMMENTS: dict[str, list[str]] = {
    "any": [
        "Phải bổ sung giấy tờ 2 lần vì lần đầu không được hướng dẫn đầy đủ.",
        "Chờ lâu quá, hẹn mãi mới trả.",
        "cho doi lau qua, goi dien k ai nghe may",
        "Bình thường, nhưng thời gian chờ ở quầy hơi lâu.",
    ],
    "land": [
        "Hồ sơ sang tên sổ đỏ trễ hẹn mấy ngày mà không thấy ai gọi báo.",
        "ho so sang ten so do tre hen, di lai 3 lan moi xong",
        "Đo đạc tách thửa mất nhiều thời gian, cán bộ địa chính hẹn đi hẹn lại.",
        "Đề nghị công khai rõ giấy tờ cần nộp, mỗi lần hỏi lại được yêu cầu một kiểu.",
    ],
    "construction": [
        "Xin GPXD bị trả hồ sơ vì thiếu bản vẽ nhưng lúc nộp không ai nói.",
        "xin gpxd mat gan 1 thang, qua lau",
    ],
    "judicial_records": ["lam lltp ma phai len tinh 2 lan, de nghi cho lam online het"],
    "other": ["Cán bộ một cửa trả lời cộc lốc, không hướng dẫn gì."],
    "late": [
        "Trễ hẹn mà không nhận được văn bản xin lỗi nào.",
        "tre hen ma ko ai bao truoc, mat 1 buoi nghi lam",
    ],
}


# ---------------------------------------------------------------- public API


@dataclass
class DemoSummary:
    """What was loaded, and codes to try in the chat."""

    agencies: int
    officials: int
    procedures: int
    dossiers: int
    ratings: int
    try_codes: list[str]  # completed, not yet rated, varied fields
    rated_code: str  # already rated
    pending_code: str  # still being processed


async def database_is_empty(session: AsyncSession) -> bool:
    """True when there is no agency yet (nothing to route to)."""
    return (await session.exec(select(Agency.id).limit(1))).first() is None


async def load_demo(
    session: AsyncSession, settings: Settings, calendar: WorkCalendar, now: datetime, seed: int
) -> DemoSummary:
    """Add the demo province to the caller's transaction (flushed, not committed)."""
    if now.tzinfo is None:
        raise ValueError("load_demo needs an aware datetime")
    gen = _Generator(session, settings, calendar, now.astimezone(UTC), random.Random(seed))
    return await gen.run()


# ---------------------------------------------------------------- generator


@dataclass
class _Planned:
    """A dossier with what the rating generator needs to know about it."""

    dossier: Dossier
    field: str
    late_done: bool = False
    showcase: bool = False


@dataclass
class _Generator:
    """Builds the demo rows for one `load_demo` call."""

    session: AsyncSession
    settings: Settings
    calendar: WorkCalendar
    now: datetime
    rng: random.Random
    agencies: dict[str, Agency] = field(default_factory=dict)
    procedures: dict[str, Procedure] = field(default_factory=dict)
    workdays: list[date] = field(default_factory=list)
    seq: dict[tuple[str, date], int] = field(default_factory=dict)
    taken_codes: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    first: int = 0  # index in `workdays` of the first day of the window

    async def run(self) -> DemoSummary:
        """Build everything in a handful of flushes."""
        today = self.now.astimezone(VIETNAM).date()
        start = today - timedelta(days=WINDOW_DAYS + 70)
        self.workdays = [
            start + timedelta(days=i)
            for i in range((today - start).days)
            if self.calendar.is_working_day(start + timedelta(days=i))
        ]
        window_start = today - timedelta(days=WINDOW_DAYS)
        self.first = next(i for i, d in enumerate(self.workdays) if d >= window_start)

        await self._fields()
        await self._agencies()
        await self._routes()
        await self._procedures()
        planned, try_items, pending = await self._dossiers()
        ratings, rated = await self._ratings(planned)
        return DemoSummary(
            agencies=self.counts["agencies"],
            officials=self.counts["officials"],
            procedures=self.counts["procedures"],
            dossiers=len(planned),
            ratings=ratings,
            try_codes=[p.dossier.code for p in try_items],
            rated_code=rated,
            pending_code=pending.dossier.code,
        )

    # ------------------------------------------------------------ reference data

    async def _routes(self) -> None:
        """The routing table: field × commune → competent agency (DOMAIN.md)."""
        if (await self.session.exec(select(Route.id).limit(1))).first() is not None:
            return  # an admin's table is never touched
        a = self.agencies
        rows = [
            Route(field="land", agency_id=a["vpdk"].id),
            Route(field="construction", agency_id=a["so_xd"].id),
            Route(field="judicial_records", agency_id=a["police"].id),
            Route(field="other", agency_id=a["office"].id),
        ]
        for i, (name, _, _) in enumerate(COMMUNES, 1):
            commune = a[f"c{i}"]
            branch = "vpdk_hoabinh" if name in LAND_BRANCH_HOA_BINH else "vpdk_viettri"
            rows += [
                Route(field="land", commune_id=commune.id, agency_id=a[branch].id),
                Route(field="construction", commune_id=commune.id, agency_id=a[f"c{i}_econ"].id),
                Route(field="other", commune_id=commune.id, agency_id=a[f"c{i}_desk"].id),
            ]
        self.session.add_all(rows)
        await self.session.flush()

    async def _fields(self) -> None:
        """The four fields, unless something else seeded them already."""
        for position, (key, vi, en) in enumerate(FIELDS, 1):
            if await self.session.get(FieldOfWork, key) is None:
                self.session.add(FieldOfWork(key=key, name_vi=vi, name_en=en, position=position))

    async def _agencies(self) -> None:
        """Create the tree level by level (children need their parent's id)."""
        specs = _agency_specs()
        existing = await self.session.exec(
            select(Agency).where(col(Agency.code).in_([s.code for s in specs]))
        )
        by_code = {a.code: a for a in existing}
        created: list[tuple[AgencySpec, Agency]] = []
        pending = list(specs)
        while pending:
            level = [s for s in pending if s.parent is None or s.parent in self.agencies]
            for spec in level:
                agency = by_code.get(spec.code)
                if agency is None:
                    parent = self.agencies[spec.parent] if spec.parent else None
                    agency = Agency(
                        code=spec.code,
                        name=spec.name,
                        kind=spec.kind,
                        parent_id=parent.id if parent else None,
                        head_title=spec.head_title,
                    )
                    self.session.add(agency)
                    created.append((spec, agency))
                self.agencies[spec.key] = agency
            pending = [s for s in pending if s not in level]
            await self.session.flush()
        officials = [o for spec, agency in created for o in self._officials(spec, agency)]
        self.session.add_all(officials)
        self.counts["agencies"] = len(created)
        self.counts["officials"] = len(officials)

    def _officials(self, spec: AgencySpec, agency: Agency) -> list[Official]:
        """The head, often a deputy, and one to three officers."""
        assert agency.id is not None
        people = [
            Official(agency_id=agency.id, name=self._name(), title=spec.head_title, role="head")
        ]
        extra = self.rng.randint(1, 3) if spec.officer_titles else 1
        if not spec.officer_titles or self.rng.random() < 0.6:
            people.append(
                Official(
                    agency_id=agency.id,
                    name=self._name(),
                    title="Phó " + spec.head_title,
                    role="deputy",
                )
            )
        titles = list(spec.officer_titles)
        while len(people) < 1 + extra and titles:
            title = titles.pop(self.rng.randrange(len(titles)))
            people.append(
                Official(agency_id=agency.id, name=self._name(), title=title, role="officer")
            )
        return people

    async def _procedures(self) -> None:
        """The procedure catalogue (existing codes reused), and codes already taken."""
        existing = await self.session.exec(
            select(Procedure).where(col(Procedure.code).in_([p.code for p in PROCEDURES]))
        )
        by_code = {p.code: p for p in existing}
        new = 0
        for spec in PROCEDURES:
            proc = by_code.get(spec.code)
            if proc is None:
                proc = Procedure(
                    code=spec.code, name=spec.name, field=spec.field, time_limit_days=spec.days
                )
                self.session.add(proc)
                new += 1
            self.procedures[spec.code] = proc
        await self.session.flush()
        self.counts["procedures"] = new
        # Agencies that already existed may already have dossiers: don't reuse their codes.
        ids = [a.id for a in self.agencies.values()]
        rows = await self.session.exec(select(Dossier.code).where(col(Dossier.agency_id).in_(ids)))
        self.taken_codes = set(rows)

    # ------------------------------------------------------------ dossiers

    async def _dossiers(self) -> tuple[list[_Planned], list[_Planned], _Planned]:
        """The showcase dossiers, then random ones up to DOSSIER_COUNT; one flush."""
        rng = self.rng
        specs = {p.code: p for p in PROCEDURES}
        last = len(self.workdays) - 1
        planned: list[_Planned] = []

        try_items = []
        for code, agency_key, late_by in TRY:
            spec = specs[code]
            done = last - rng.randint(0, 3)
            k = spec.days + late_by if late_by else rng.randint(max(0, spec.days - 3), spec.days)
            item = self._dossier(spec, agency_key, done - k, "completed", k, named=True)
            item.showcase = True
            try_items.append(item)
        spec = specs[PENDING[0]]
        pending = self._dossier(spec, PENDING[1], last - 1, "received", named=True)
        pending.showcase = True
        planned += [*try_items, pending]

        weights = [p.weight for p in PROCEDURES]
        while len(planned) < DOSSIER_COUNT:
            spec = rng.choices(PROCEDURES, weights)[0]
            agency_key = self._handler(spec)
            status = rng.choices(["completed", "received", "late"], [0.56, 0.32, 0.12])[0]
            days = spec.days
            if status == "completed":
                late_done = rng.random() < (0.22 if spec.field == "land" else 0.12)
                if late_done:
                    k = days + rng.choice([1, 1, 2, 2, 3, 4, 5, 7, 10])
                else:
                    k = round(days * rng.triangular(0.2, 1.0, 0.85))
                k = min(k, last - self.first)
                received = rng.randint(self.first, max(self.first, last - k))
                planned.append(self._dossier(spec, agency_key, received, status, k))
            elif status == "received":
                if rng.random() < 0.8:  # due today or later
                    received = rng.randint(max(self.first, last + 1 - max(days, 1)), last)
                else:  # overdue, the late event not sent (yet)
                    received = rng.randint(max(self.first, last - days - 8), last - days - 1)
                planned.append(self._dossier(spec, agency_key, received, status))
            else:
                received = rng.randint(max(self.first, last - days - 25), last - days - 1)
                planned.append(self._dossier(spec, agency_key, received, status))

        # Shuffle so ids don't reveal the showcase dossiers.
        rng.shuffle(planned)
        self.session.add_all([p.dossier for p in planned])
        await self.session.flush()
        return planned, try_items, pending

    def _handler(self, spec: ProcedureSpec) -> str:
        """The key of an agency competent for `spec` (bigger wards get more)."""
        keys = HANDLERS[spec.handlers]
        if spec.handlers in ("econ", "desk"):
            return self.rng.choices(keys, [w for _, _, w in COMMUNES])[0]
        return self.rng.choice(keys)

    def _dossier(
        self,
        spec: ProcedureSpec,
        agency_key: str,
        received_idx: int,
        status: str,
        done_after: int | None = None,
        named: bool | None = None,
    ) -> _Planned:
        """One dossier received on workdays[received_idx], done `done_after` workdays later."""
        rng = self.rng
        agency = self.agencies[agency_key]
        proc = self.procedures[spec.code]
        day = self.workdays[received_idx]
        minute = self._office_minute()
        received_at = _at(day, minute)
        due_at = end_of_day(self.calendar.add_working_days(day, spec.days)).astimezone(UTC)
        completed_at = None
        if status == "completed":
            assert done_after is not None
            done_day = self.workdays[received_idx + done_after]
            if done_day == day:
                done_minute = min(minute + rng.randint(30, 240), 17 * 60 + 15)
            else:
                done_minute = self._office_minute()
            completed_at = _at(done_day, done_minute)
        dossier = Dossier(
            code=self._code(agency.code, day),
            procedure_id=proc.id,  # type: ignore[arg-type]
            agency_id=agency.id,  # type: ignore[arg-type]
            received_at=received_at,
            due_at=due_at,
            completed_at=completed_at,
            status=status,
            updated_at=self.now,
        )
        if named if named is not None else rng.random() < 0.6:
            dossier.citizen_name = self._name(unique=False)
            dossier.citizen_phone = rng.choice(PHONE_PREFIXES) + f"{rng.randrange(10**7):07d}"
        late_done = completed_at is not None and completed_at > due_at
        return _Planned(dossier, spec.field, late_done)

    def _code(self, agency_code: str, day: date) -> str:
        """`<agency code>-YYMMDD-NNNN`, the number unique per agency and day."""
        key = (agency_code, day)
        number = self.seq.get(key, self.rng.randint(0, 40)) + self.rng.randint(1, 9)
        while True:
            code = f"{agency_code}-{day:%y%m%d}-{number:04d}"
            if code not in self.taken_codes:
                break
            number += 1
        self.seq[key] = number
        self.taken_codes.add(code)
        return code

    def _office_minute(self) -> int:
        """A minute of office hours (7:30–11:30, 13:30–16:45), local time."""
        if self.rng.random() < 0.6:
            return self.rng.randint(7 * 60 + 30, 11 * 60 + 30)
        return self.rng.randint(13 * 60 + 30, 16 * 60 + 45)

    def _name(self, unique: bool = True) -> str:
        """A fictional Vietnamese full name: family + middle + given."""
        rng = self.rng
        while True:
            if rng.random() < 0.5:
                name = f"{rng.choice(FAMILY)} {rng.choice(MIDDLE_M)} {rng.choice(GIVEN_M)}"
            else:
                name = f"{rng.choice(FAMILY)} {rng.choice(MIDDLE_F)} {rng.choice(GIVEN_F)}"
            if not unique or name not in self.names:
                self.names.add(name)
                return name

    # ------------------------------------------------------------ ratings

    async def _ratings(self, planned: list[_Planned]) -> tuple[int, str]:
        """Rate about half the completed dossiers (never the showcase ones)."""
        rng = self.rng
        rating_cfg = self.settings.rating
        # Each citizen sticks to one channel.
        channels = rng.choices(["webchat", "zalo", "telegram"], [0.45, 0.4, 0.15], k=CITIZEN_COUNT)
        rated: list[tuple[_Planned, int, datetime]] = []
        for item in planned:
            d = item.dossier
            if item.showcase or d.status != "completed" or rng.random() >= 0.5:
                continue
            assert d.completed_at is not None
            delay = timedelta(minutes=rng.choice([5, 20, 60, 180, 600, 1440, 2880]))
            delay += timedelta(minutes=rng.randint(0, 90))
            created = min(d.completed_at + delay, self.now - timedelta(minutes=rng.randint(5, 60)))
            if created <= d.completed_at:
                continue
            rated.append((item, rng.randrange(CITIZEN_COUNT), created))

        first_seen: dict[int, datetime] = {}
        for _, who, created in rated:
            first_seen[who] = min(first_seen.get(who, created), created)
        citizens = {
            who: Citizen(created_at=first_seen[who] - timedelta(minutes=rng.randint(2, 30)))
            for who in sorted(first_seen)
        }
        self.session.add_all(list(citizens.values()))
        await self.session.flush()

        # Moods spread evenly within each (field, late) group: the demo's satisfaction
        # rates stay close to the intended ones whatever the seed.
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, (item, _, _) in enumerate(rated):
            groups.setdefault((item.field, item.late_done), []).append(i)
        moods = [0.0] * len(rated)
        for members in groups.values():
            spread = [(j + rng.random()) / len(members) for j in range(len(members))]
            rng.shuffle(spread)
            for i, mood in zip(members, spread, strict=True):
                moods[i] = mood

        keys = [c.key for c in rating_cfg.criteria]
        ratings: list[tuple[Rating, list[ScaleLevel]]] = []
        for (item, who, created), mood in zip(rated, moods, strict=True):
            levels, happy = self._answers(item, mood, rating_cfg.scale, keys)
            comment = None
            if rng.random() < 0.35:
                comment = self._comment(item, happy)
            rating = Rating(
                dossier_id=item.dossier.id,  # type: ignore[arg-type]
                citizen_id=citizens[who].id,  # type: ignore[arg-type]
                channel=channels[who],
                comment=comment,
                created_at=created,
            )
            ratings.append((rating, levels))
        self.session.add_all([r for r, _ in ratings])
        await self.session.flush()

        answers = [
            RatingAnswer(
                rating_id=rating.id,  # type: ignore[arg-type]
                criterion=criterion.key,
                value=level.value,
                label=level.vi,
                counts_as=level.counts_as,
            )
            for rating, levels in ratings
            for criterion, level in zip(rating_cfg.criteria, levels, strict=True)
        ]
        self.session.add_all(answers)
        await self.session.flush()

        latest = max(((r.created_at, i) for i, (r, _) in enumerate(ratings)), default=None)
        rated_code = rated[latest[1]][0].dossier.code if latest else ""
        return len(ratings), rated_code

    def _answers(
        self, item: _Planned, mood: float, scale: Sequence[ScaleLevel], criteria: list[str]
    ) -> tuple[list[ScaleLevel], bool]:
        """Answers that agree with each other: a rater is mostly happy or mostly not.

        `mood` is uniform in [0, 1): below the chance of being happy means happy.
        """
        rng = self.rng
        p = HAPPY.get(item.field, 0.85) - (LATE_PENALTY if item.late_done else 0.0)
        happy = mood < p
        levels = []
        for key in criteria:
            q = 0.96 if happy else 0.3
            if key == "time" and item.late_done:
                q *= 0.4
            levels.append(self._level(scale, rng.random() < q))
        return levels, happy

    def _level(self, scale: Sequence[ScaleLevel], satisfied: bool) -> ScaleLevel:
        """A level of the configured scale, satisfied or not, with realistic weights."""
        if satisfied:
            pool = [lv for lv in scale if lv.counts_as == "satisfied"]
            # The top level a bit less often than the others together.
            weights = [0.55 / max(1, len(pool) - 1)] * (len(pool) - 1) + [0.45]
        else:
            pool = [lv for lv in scale if lv.counts_as != "satisfied"]
            if not pool:
                return scale[0]
            # Neutral most often; of several unsatisfied levels, the harshest least.
            unsat = [lv.value for lv in pool if lv.counts_as == "unsatisfied"]
            harshest = min(unsat) if len(unsat) > 1 else None
            weights = [
                3.0 if lv.counts_as == "neutral" else 1.0 if lv.value == harshest else 2.0
                for lv in pool
            ]
        return self.rng.choices(pool, weights)[0]

    def _comment(self, item: _Planned, happy: bool) -> str:
        """A short comment matching the rater's mood, the field and lateness."""
        if happy:
            pool = GOOD_COMMENTS["any"] + GOOD_COMMENTS.get(item.field, []) * 2
        else:
            pool = BAD_COMMENTS["any"] + BAD_COMMENTS.get(item.field, []) * 2
            if item.late_done:
                pool += BAD_COMMENTS["late"] * 3
        return self.rng.choice(pool)


def _at(day: date, minute: int) -> datetime:
    """A local (Vietnam) day and minute of the day, as aware UTC."""
    local = datetime.combine(day, time(minute // 60, minute % 60), VIETNAM)
    return local.astimezone(UTC)
