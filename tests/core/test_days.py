from datetime import date

import pytest

from orchestrator.core.days import Offset, OffsetError, WorkCalendar, add_offset
from tests.conftest import wib

ID = WorkCalendar("ID", (5, 6))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5d", Offset(5, "d")),
        ("24h", Offset(24, "h")),
        ("2bd", Offset(2, "bd")),
        (" 1mo ", Offset(1, "mo")),
    ],
)
def test_parse(text: str, expected: Offset) -> None:
    assert Offset.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["5", "five days", "5w", "1.5d", "99999999999d", "3661d", "-121mo", "87601h"]
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(OffsetError):
        Offset.parse(text)


def test_negative_offsets_count_back() -> None:
    assert Offset.parse("-14d") == Offset(-14, "d")
    assert add_offset(wib(2026, 12, 15), Offset(-14, "d"), ID) == wib(2026, 12, 1)
    # Back from Tuesday 29 December: Monday 28 is one business day, then the
    # weekend and Christmas (a holiday) are skipped to Thursday 24.
    assert add_offset(wib(2026, 12, 29), Offset(-2, "bd"), ID) == wib(2026, 12, 24)
    assert add_offset(wib(2026, 3, 31), Offset(-1, "mo"), ID) == wib(2026, 2, 28)


def test_calendar_days_keep_the_wall_clock() -> None:
    assert add_offset(wib(2026, 12, 1), Offset(5, "d"), ID) == wib(2026, 12, 6)


def test_hours() -> None:
    assert add_offset(wib(2026, 12, 1, 9), Offset(120, "h"), ID) == wib(2026, 12, 6, 9)


def test_business_days_skip_weekend_and_indonesian_holidays() -> None:
    # 2026-12-24 is a Thursday; 25 December (Christmas) is a public holiday in
    # Indonesia, 26-27 are a weekend, so two business days land on the 29th.
    assert not ID.is_business_day(date(2026, 12, 25))
    assert add_offset(wib(2026, 12, 24), Offset(2, "bd"), ID) == wib(2026, 12, 29)


def test_months_clamp_to_month_end() -> None:
    assert add_offset(wib(2027, 1, 31), Offset(1, "mo"), ID) == wib(2027, 2, 28)
    assert add_offset(wib(2026, 12, 1), Offset(3, "mo"), ID) == wib(2027, 3, 1)
