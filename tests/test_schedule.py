"""Schedules of periodic jobs: epoch-aligned intervals and UTC cron expressions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paglets_artifacts.schedule import Schedule, parse_schedule


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("text,interval", [("300", 300.0), (" 60 ", 60.0), ("1", 1.0), ("2.5", 2.5), ("1e3", 1000.0)])
def test_a_number_is_an_interval_in_seconds(text, interval):
    schedule = parse_schedule(text)
    assert schedule.interval == interval
    assert schedule.text == text.strip()


@pytest.mark.parametrize("text", ["*/5 * * * *", "0 3 * * 1-5", "@hourly", "  0 * * * *  "])
def test_a_cron_expression_is_accepted(text):
    schedule = parse_schedule(text)
    assert schedule.interval is None and schedule.text == text.strip()


@pytest.mark.parametrize("text", ["0", "0.5", "-10", "nan", "inf", "-inf"])
def test_intervals_shorter_than_a_second_or_not_finite_are_refused(text):
    with pytest.raises(ValueError, match="at least 1 second"):
        parse_schedule(text)


@pytest.mark.parametrize("text", ["", "   ", "every five minutes", "61 * * * *", "* * *", "*/0 * * * *"])
def test_anything_else_is_refused_naming_the_text(text):
    with pytest.raises(ValueError, match="neither a number of seconds nor a cron expression"):
        parse_schedule(text)


def test_interval_ticks_are_aligned_to_the_epoch():
    schedule = parse_schedule("300")
    assert schedule.next_after(1000.0) == 1200.0
    assert schedule.next_after(1200.0) == 1500.0  # strictly after
    assert schedule.last_at_or_before(1200.0) == 1200.0
    assert schedule.last_at_or_before(1499.9) == 1200.0


def test_two_schedulers_started_at_different_moments_agree_on_the_ticks():
    schedule = parse_schedule("60")
    assert schedule.next_after(1_700_000_040.5) == schedule.next_after(1_700_000_099.9) == 1_700_000_100.0


def test_cron_ticks_in_utc():
    schedule = parse_schedule("0 * * * *")
    assert schedule.next_after(utc(2024, 5, 1, 10, 0, 1)) == utc(2024, 5, 1, 11)
    assert schedule.next_after(utc(2024, 5, 1, 10)) == utc(2024, 5, 1, 11)  # strictly after
    assert schedule.last_at_or_before(utc(2024, 5, 1, 11)) == utc(2024, 5, 1, 11)  # at
    assert schedule.last_at_or_before(utc(2024, 5, 1, 11, 59, 59)) == utc(2024, 5, 1, 11)
    daily = parse_schedule("30 2 * * *")
    assert daily.next_after(utc(2024, 12, 31, 23)) == utc(2025, 1, 1, 2, 30)


@given(
    interval=st.integers(min_value=1, max_value=86400),
    moment=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_interval_tick_properties(interval, moment):
    schedule = Schedule(str(interval), float(interval))
    last = schedule.last_at_or_before(moment)
    following = schedule.next_after(moment)
    assert last <= moment < following
    assert following - last == interval
    assert last % interval == 0


@given(moment=st.integers(min_value=utc(2000, 1, 1), max_value=utc(2090, 1, 1)))
def test_cron_tick_properties(moment):
    schedule = parse_schedule("*/15 * * * *")
    last = schedule.last_at_or_before(float(moment))
    following = schedule.next_after(float(moment))
    assert last <= moment < following
    assert following - last == 900
    assert last % 900 == 0
