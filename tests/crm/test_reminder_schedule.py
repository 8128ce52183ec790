"""Task reminder schedule math as pure functions: occurrences, offsets, DST, the run's window, settings."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from crm.routines.reminders import (
    Recurrence,
    Window,
    business_key,
    due_between,
    iter_due,
    occurrences,
    send_time,
    side_settings,
    sides_of,
    to_instant,
)

WAW = ZoneInfo("Europe/Warsaw")  # DST: last Sunday of March (2026-03-29) and of October (2026-10-25)
SAO = ZoneInfo("America/Sao_Paulo")  # no DST since 2019: UTC-3 all year


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args)


def test_should_send_a_one_off_reminder_offset_minutes_before_the_start():
    start = local(2026, 5, 6, 10, 0)  # 10:00 São Paulo = 13:00 UTC
    assert send_time(start, 120, SAO) == utc(2026, 5, 6, 11, 0)
    assert send_time(start, 0, SAO) == utc(2026, 5, 6, 13, 0)
    (due,) = due_between(start, Recurrence(), SAO, 15, utc(2026, 5, 6, 12, 30), utc(2026, 5, 6, 12, 45))
    assert due.send_at == utc(2026, 5, 6, 12, 45) and due.starts_at == utc(2026, 5, 6, 13, 0)
    # the window is (after, until]: the reminder at 12:45 belongs to the run ending 12:45, not the next one
    assert due_between(start, Recurrence(), SAO, 15, utc(2026, 5, 6, 12, 45), utc(2026, 5, 6, 13, 0)) == []


def test_should_count_whole_days_of_an_offset_on_the_calendar_across_dst():
    # the day after the spring change: one day before 10:00 CEST is 10:00 CET (09:00 UTC), 23 h earlier
    start = local(2026, 3, 30, 10, 0)
    assert to_instant(start, WAW) == utc(2026, 3, 30, 8, 0)
    assert send_time(start, 1440, WAW) == utc(2026, 3, 29, 8, 0)  # 10:00 local on the 29th (CEST already)
    assert send_time(local(2026, 3, 29, 10, 0), 1440, WAW) == utc(2026, 3, 28, 9, 0)  # 10:00 CET on the 28th
    # the minutes are elapsed time: 1 day 2 hours before 10:00 on the 30th = 10:00 on the 29th minus 2 real hours
    assert send_time(start, 1440 + 120, WAW) == utc(2026, 3, 29, 6, 0)


def test_should_keep_a_weekly_task_at_its_local_time_across_both_dst_changes():
    start = local(2026, 3, 15, 10, 0)  # Sundays 10:00 Warsaw, from before the spring change to after the autumn one
    got = due_between(start, Recurrence("weekly"), WAW, 60, utc(2026, 3, 16), utc(2026, 11, 2))
    assert all(d.occurrence.weekday() == 6 and d.occurrence.hour == 10 for d in got)
    assert len(got) == 33  # 22 Mar .. 1 Nov, one per Sunday
    by_day = {d.occurrence.date(): d for d in got}
    assert by_day[dt.date(2026, 3, 22)].send_at == utc(2026, 3, 22, 8, 0)  # CET: 10:00 = 09:00 UTC, minus 1 h
    assert by_day[dt.date(2026, 3, 29)].send_at == utc(2026, 3, 29, 7, 0)  # the change day itself: CEST
    assert by_day[dt.date(2026, 10, 25)].send_at == utc(2026, 10, 25, 8, 0)  # back to CET that morning
    assert by_day[dt.date(2026, 10, 18)].send_at == utc(2026, 10, 18, 7, 0)


def test_should_move_a_time_inside_the_spring_gap_forward_and_take_the_first_of_a_repeated_time():
    assert to_instant(local(2026, 3, 29, 2, 30), WAW) == to_instant(local(2026, 3, 29, 3, 30), WAW)
    assert to_instant(local(2026, 10, 25, 2, 30), WAW) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, the first one
    daily = due_between(local(2026, 3, 27, 2, 30), Recurrence("daily"), WAW, 0, utc(2026, 3, 26), utc(2026, 3, 31))
    assert [d.send_at for d in daily] == [
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 30),  # 02:30 does not exist: 03:30 CEST
        utc(2026, 3, 30, 0, 30),
    ]


def test_should_honour_interval_count_and_until_of_a_recurrence():
    start = local(2026, 1, 5, 9, 0)  # a Monday
    lo, hi = local(2025, 1, 1), local(2027, 12, 31)
    every_other_week = occurrences(start, Recurrence("weekly", interval=2, count=4), lo, hi)
    assert [d.date() for d in every_other_week] == [
        dt.date(2026, 1, 5),
        dt.date(2026, 1, 19),
        dt.date(2026, 2, 2),
        dt.date(2026, 2, 16),
    ]
    until = occurrences(start, Recurrence("daily", until=local(2026, 1, 8, 9, 0)), lo, hi)
    assert [d.day for d in until] == [5, 6, 7, 8]  # the end is inclusive
    assert occurrences(start, Recurrence(), lo, hi) == [start]
    assert occurrences(start, Recurrence(), local(2026, 2, 1), hi) == []


def test_should_put_a_monthly_task_on_the_31st_on_the_last_day_of_shorter_months():
    got = occurrences(local(2026, 1, 31, 9, 0), Recurrence("monthly"), local(2026, 1, 1), local(2026, 6, 1))
    assert [d.date() for d in got] == [
        dt.date(2026, 1, 31),
        dt.date(2026, 2, 28),
        dt.date(2026, 3, 31),
        dt.date(2026, 4, 30),
        dt.date(2026, 5, 31),
    ]
    assert [
        d.day
        for d in occurrences(
            local(2026, 1, 15, 9), Recurrence("monthly", interval=2), local(2026, 1, 1), local(2026, 8, 1)
        )
    ] == [15, 15, 15, 15]


@pytest.mark.parametrize(
    "recurrence",
    [
        Recurrence("daily"),
        Recurrence("daily", interval=3),
        Recurrence("weekly", interval=2),
        Recurrence("monthly"),
        Recurrence("monthly", interval=5),
        Recurrence("weekly", until=local(2031, 1, 1)),
    ],
)
def test_should_find_the_same_occurrences_when_fast_forwarding_an_old_recurring_task(recurrence):
    from dateutil.rrule import rrule

    from crm.routines.reminders import FREQUENCIES

    start = local(2019, 1, 31, 7, 45)
    lo, hi = local(2030, 2, 20), local(2030, 5, 10)
    got = occurrences(start, recurrence, lo, hi)
    extra = {"bymonthday": (28, 29, 30, 31), "bysetpos": -1} if recurrence.freq == "monthly" else {}
    slow = rrule(
        FREQUENCIES[recurrence.freq], dtstart=start, interval=recurrence.interval, until=recurrence.until, **extra
    ).between(lo, hi, inc=True)
    assert got == slow and got


def test_should_split_new_missed_and_catch_up_reminders_by_the_window():
    end = utc(2026, 5, 6, 12, 0)
    grace = dt.timedelta(hours=24)
    normal = Window(end, utc(2026, 5, 6, 11, 45), grace)
    assert normal.classify(utc(2026, 5, 6, 11, 50)) == "due"
    assert normal.classify(utc(2026, 5, 6, 11, 45)) == "catch_up"  # the previous run's: only if still unsent
    assert normal.classify(utc(2026, 5, 5, 12, 0)) is None  # older than the grace and not new: not ours
    assert normal.classify(utc(2026, 5, 6, 12, 1)) is None  # not yet
    down_3h = Window(end, utc(2026, 5, 6, 9, 0), grace)
    assert down_3h.classify(utc(2026, 5, 6, 9, 30)) == "due" and down_3h.scan_from == utc(2026, 5, 5, 12, 0)
    down_3d = Window(end, utc(2026, 5, 3, 12, 0), grace)
    assert down_3d.scan_from == utc(2026, 5, 3, 12, 0)
    assert down_3d.classify(utc(2026, 5, 4, 8, 0)) == "missed"
    assert down_3d.classify(utc(2026, 5, 5, 12, 0)) == "missed"  # exactly the grace period late: too late
    assert down_3d.classify(utc(2026, 5, 5, 12, 1)) == "due"
    first = Window(end, None, grace)
    assert first.classify(utc(2026, 5, 5, 13, 0)) == "due" and first.classify(utc(2026, 5, 5, 11, 0)) is None
    backfill = Window(end, utc(2026, 5, 9), grace)  # an older date run after newer ones: only what is unsent
    assert backfill.classify(utc(2026, 5, 6, 11, 0)) == "catch_up"


SETTINGS = {
    "customer_defaults_enabled": 1,
    "customer_default_channel": "sms",
    "customer_sms_template": "task_reminder",
    "customer_sms_offset_minutes": 120,
    "customer_email_template": "task_reminder",
    "customer_email_offset_minutes": 1440,
    "operator_defaults_enabled": 0,
    "operator_default_channel": "email",
    "operator_email_template": "task_reminder_operator",
    "operator_email_offset_minutes": 30,
}
BLANK_TASK = {
    f"{side}_{k}": None for side in ("customer", "operator") for k in ("channel", "offset_minutes", "template")
}


def test_should_fall_back_on_the_company_defaults_only_where_the_task_is_silent_and_defaults_are_on():
    s = side_settings(BLANK_TASK, SETTINGS, "customer")
    assert (s.channel, s.offset_minutes, s.template, s.problem) == ("sms", 120, "task_reminder", None)
    own = side_settings(
        {**BLANK_TASK, "customer_channel": "email", "customer_offset_minutes": 15}, SETTINGS, "customer"
    )
    assert (own.channel, own.offset_minutes, own.template) == ("email", 15, "task_reminder")  # template: the default
    zero = side_settings({**BLANK_TASK, "customer_offset_minutes": 0}, SETTINGS, "customer")
    assert zero.offset_minutes == 0 and zero.problem is None  # 0 is an offset, not "unset"
    off = side_settings(BLANK_TASK, SETTINGS, "operator")  # operator defaults disabled
    assert off.channel is None and off.problem == "no reminder channel for operators"
    task_only = {**BLANK_TASK, "operator_channel": "email", "operator_offset_minutes": 10, "operator_template": "x"}
    assert side_settings(task_only, SETTINGS, "operator").problem is None
    half = side_settings({**BLANK_TASK, "operator_channel": "sms"}, SETTINGS, "operator")
    assert half.problem == "no sms reminder offset for operators"


def test_should_reach_customers_operators_or_both_by_the_recipients_mode():
    assert sides_of("customers") == ("customer",)
    assert sides_of("operators") == ("operator",)
    assert sides_of("both") == ("customer", "operator")
    with pytest.raises(ValueError, match="recipients"):
        sides_of("everyone")
    task = {
        **BLANK_TASK,
        "starts_at": local(2026, 5, 6, 10, 0),
        "recipients": "both",
        "operator_channel": "email",
        "operator_offset_minutes": 60,
        "operator_template": "task_reminder_operator",
    }
    window = Window(utc(2026, 5, 6, 13, 0), utc(2026, 5, 5, 12, 0), dt.timedelta(hours=24))
    hits = {(side, s.channel, due.send_at) for side, s, due, _ in iter_due(task, SETTINGS, SAO, window)}
    assert hits == {("customer", "sms", utc(2026, 5, 6, 11, 0)), ("operator", "email", utc(2026, 5, 6, 12, 0))}


def test_should_key_each_occurrence_and_side_apart_with_the_local_offset():
    assert business_key(7, local(2026, 3, 22, 10), WAW, "customer") == "task 7 / 2026-03-22T10:00+01:00 / customer"
    assert business_key(7, local(2026, 3, 29, 10), WAW, "operator") == "task 7 / 2026-03-29T10:00+02:00 / operator"


def test_should_refuse_a_malformed_recurrence():
    with pytest.raises(ValueError):
        Recurrence("yearly")
    with pytest.raises(ValueError):
        Recurrence("daily", interval=0)
