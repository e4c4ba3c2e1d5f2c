"""Working days (ngày làm việc): weekends and Vietnamese public holidays don't count.

Public holidays, lunar Tết included, come from the `holidays` package; decreed extra
days off and make-up working days come from configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

import holidays


class WorkCalendar:
    def __init__(
        self, extra_days_off: Iterable[date] = (), makeup_working_days: Iterable[date] = ()
    ) -> None:
        self._holidays = holidays.country_holidays("VN")
        self._off = set(extra_days_off)
        self._makeup = set(makeup_working_days)

    def is_working_day(self, day: date) -> bool:
        if day in self._makeup:
            return True
        if day in self._off or day in self._holidays:
            return False
        return day.weekday() < 5

    def add_working_days(self, start: date, days: int) -> date:
        """The date `days` working days after `start` (the day of receipt not counted)."""
        day = start
        left = days
        while left > 0:
            day += timedelta(days=1)
            if self.is_working_day(day):
                left -= 1
        return day
