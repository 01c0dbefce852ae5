"""Offsets and calendars: how a policy's "5 days", "2 business days" or
"1 calendar month" turns into an instant.

Every ladder step sits at an offset from an anchor. Offsets are written as a
whole number and a unit, the way the terms of service word them:

- ``24h``: hours ("cancelled after 24 hours", "5x24 hours" is ``120h``)
- ``5d``: calendar days, counted on the policy's wall clock
- ``2bd``: business days: weekends and the policy's public holidays skipped
- ``1mo``: calendar months ("1 calendar month after written notice")

Offsets are never negative: a ladder only moves forward from its anchor.
Everything here is pure; the holiday tables are data shipped by the
``holidays`` package.
"""

from __future__ import annotations

import calendar as _calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

import holidays

Unit = Literal["h", "d", "bd", "mo"]
_OFFSET = re.compile(r"^\s*(-?\d+)\s*(h|d|bd|mo)\s*$")
UNIT_WORDS: dict[str, str] = {"h": "hours", "d": "days", "bd": "business days", "mo": "months"}


class OffsetError(ValueError):
    """An offset that a policy cannot mean."""


@dataclass(frozen=True, order=True)
class Offset:
    """A non-negative distance from an anchor, in one unit."""

    count: int
    unit: Unit

    @classmethod
    def parse(cls, text: str) -> Offset:
        match = _OFFSET.match(text)
        if match is None:
            raise OffsetError(
                f"{text!r} is not an offset: write a whole number and a unit, "
                "h (hours), d (days), bd (business days) or mo (months), e.g. '5d'"
            )
        count = int(match.group(1))
        if count < 0:
            raise OffsetError(f"{text!r} is negative: a ladder only moves forward from its anchor")
        return cls(count, match.group(2))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    def words(self) -> str:
        return f"{self.count} {UNIT_WORDS[self.unit]}"


@dataclass(frozen=True)
class WorkCalendar:
    """Which days count as business days for a policy."""

    country: str = "ID"
    weekend: tuple[int, ...] = (5, 6)

    def is_business_day(self, day: date) -> bool:
        return day.weekday() not in self.weekend and day not in _holidays(self.country, day.year)


@lru_cache(maxsize=256)
def _holidays(country: str, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, years=year).keys())


def add_offset(start: datetime, offset: Offset, work: WorkCalendar) -> datetime:
    """The instant ``offset`` after ``start``, counted on ``start``'s wall clock."""
    if offset.unit == "h":
        return start + timedelta(hours=offset.count)
    if offset.unit == "d":
        return _on_day(start, start.date() + timedelta(days=offset.count))
    if offset.unit == "mo":
        return _on_day(start, _add_months(start.date(), offset.count))
    return _on_day(start, _add_business_days(start.date(), offset.count, work))


def _on_day(start: datetime, day: date) -> datetime:
    return datetime.combine(day, start.timetz())


def _add_months(day: date, months: int) -> date:
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    last = _calendar.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


def _add_business_days(day: date, count: int, work: WorkCalendar) -> date:
    while count > 0:
        day += timedelta(days=1)
        if work.is_business_day(day):
            count -= 1
    return day


def start_of_day(day: date, zone: ZoneInfo) -> datetime:
    """A date named in billing (a due date) begins at midnight on the policy's clock."""
    return datetime.combine(day, time(0), tzinfo=zone)
