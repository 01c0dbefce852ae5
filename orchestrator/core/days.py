"""Offsets and calendars: how a policy's "5 days", "2 business days" or
"1 calendar month" turns into an instant.

Every ladder step sits at an offset from an anchor. Offsets are written as a
whole number and a unit, the way the terms of service word them:

- ``24h``: hours ("cancelled after 24 hours", "5x24 hours" is ``120h``)
- ``5d``: calendar days, counted on the policy's wall clock
- ``2bd``: business days: weekends and the policy's public holidays skipped
- ``1mo``: calendar months ("1 calendar month after written notice")

A negative offset (``-14d``) lies before its anchor: an invoice reminder 14
days before the due date. Offsets are bounded (``MAX_COUNT``) so that no
policy can push an instant past the calendar's end.
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


# About ten years in each unit: longer than any term of service asks for.
MAX_COUNT: dict[str, int] = {"h": 87_600, "d": 3_660, "bd": 2_610, "mo": 120}


@dataclass(frozen=True, order=True)
class Offset:
    """A distance from an anchor, in one unit; negative lies before it."""

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
        count, unit = int(match.group(1)), match.group(2)
        if abs(count) > MAX_COUNT[unit]:
            raise OffsetError(
                f"{text!r} is too far: at most {MAX_COUNT[unit]}{unit} (about ten years)"
            )
        return cls(count, unit)  # type: ignore[arg-type]

    @property
    def negative(self) -> bool:
        return self.count < 0

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
    step = timedelta(days=1 if count >= 0 else -1)
    remaining = abs(count)
    while remaining > 0:
        day += step
        if work.is_business_day(day):
            remaining -= 1
    return day


def start_of_day(day: date, zone: ZoneInfo) -> datetime:
    """A date named in billing (a due date) begins at midnight on the policy's clock."""
    return datetime.combine(day, time(0), tzinfo=zone)
