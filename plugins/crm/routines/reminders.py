"""Task reminder schedule math, pure (no database, no Airflow): occurrences, send times, the run's window.

Why wall-clock: a task's "date from" (`crm_task.starts_at`) and its recurrence end are local times
of the company's timezone, as the operator typed them. A weekly 10:00 meeting stays at 10:00
after a DST change, so the recurrence (python-dateutil's rrule) runs over naive local times, and
each occurrence is converted to an instant on its own: 10:00 in Warsaw is 09:00 UTC in winter
and 08:00 UTC in summer.

- A local time that does not exist (skipped by a spring-forward change, e.g. 02:30 on the last
  Sunday of March in Warsaw) is moved forward by the gap (03:30); an ambiguous one (repeated by
  the autumn change) is the first of the two (summer time). That is zoneinfo's fold=0.
- The offset ("remind me N minutes before") is split into whole days, counted on the calendar
  (one day before a 10:00 task is 10:00 the day before, DST or not), and the remaining minutes,
  counted as elapsed time (two hours before is two real hours before).
- Monthly recurrences on the 29th-31st fall on the month's last day in shorter months (RFC 5545
  would skip those months; a reminder nobody gets is worse than one a day early).

The run's window (see `Window`): every reminder whose send time falls after the previous
successful run's window end and at or before this run's end is new; among them, those older than
the grace period are reported missed rather than sent late. Reminders due within the grace period
but at or before the previous end were that run's; they are caught up only if still unsent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta
from dateutil.rrule import DAILY, MONTHLY, WEEKLY, rrule

FREQUENCIES = {"daily": DAILY, "weekly": WEEKLY, "monthly": MONTHLY}
SIDES = ("customer", "operator")
MODE_SIDES = {"customers": ("customer",), "operators": ("operator",), "both": ("customer", "operator")}
CHANNELS = ("email", "sms")
_MARGIN = dt.timedelta(days=2)  # wider than any UTC offset plus a DST shift


@dataclass(frozen=True)
class Recurrence:
    """A task's repetition: frequency (None: one-off), interval, and an end (local date-time, inclusive) or a count."""

    freq: str | None = None
    interval: int = 1
    until: dt.datetime | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.freq is not None and self.freq not in FREQUENCIES:
            raise ValueError(f"recurrence is daily, weekly or monthly, not {self.freq!r}")
        if self.interval < 1:
            raise ValueError(f"recurrence interval must be at least 1, not {self.interval}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"recurrence count must be at least 1, not {self.count}")


def to_instant(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """A naive local wall-clock time as an aware UTC instant (gap: moved forward; overlap: the first)."""
    # PEP 495: with fold=0 a time in a gap takes the offset from before the change, which lands
    # on the wall-clock time moved forward by the gap; a repeated time takes its first instance.
    return local.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)


def to_local(instant: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """An aware instant as naive local wall-clock time."""
    return instant.astimezone(tz).replace(tzinfo=None)


def occurrences(start: dt.datetime, recurrence: Recurrence, lo: dt.datetime, hi: dt.datetime) -> list[dt.datetime]:
    """Occurrence starts (naive local) between `lo` and `hi` inclusive; a one-off task has one: its start."""
    if recurrence.freq is None:
        return [start] if lo <= start <= hi else []
    return list(_rule(start, recurrence, lo).between(lo, hi, inc=True))


def _rule(start: dt.datetime, recurrence: Recurrence, lo: dt.datetime) -> rrule:
    freq = FREQUENCIES[recurrence.freq or ""]
    extra: dict = {}
    if freq == MONTHLY and start.day > 28:
        extra = {"bymonthday": tuple(range(28, start.day + 1)), "bysetpos": -1}  # clamp to the month's end
    elif freq == MONTHLY:
        extra = {"bymonthday": start.day}
    dtstart = start if recurrence.count is not None else _fast_forward(start, recurrence, lo)
    return rrule(
        freq, dtstart=dtstart, interval=recurrence.interval, until=recurrence.until, count=recurrence.count, **extra
    )


def _fast_forward(start: dt.datetime, recurrence: Recurrence, lo: dt.datetime) -> dt.datetime:
    """A later start on the same grid, just before `lo`: an old daily task need not be replayed from day one.

    Only without a count (a count is numbered from the first occurrence). Whole periods keep the
    weekday and the time of day; monthly rules carry the day of month explicitly (see `_rule`).
    """
    if lo <= start:
        return start
    if recurrence.freq == "monthly":
        months = (lo.year - start.year) * 12 + lo.month - start.month
        k = max(0, months // recurrence.interval - 1)
        return start + relativedelta(months=k * recurrence.interval)
    period = dt.timedelta(days=recurrence.interval * (7 if recurrence.freq == "weekly" else 1))
    k = max(0, (lo - start) // period - 1)
    return start + k * period


def send_time(occurrence: dt.datetime, offset_minutes: int, tz: ZoneInfo) -> dt.datetime:
    """When the reminder of an occurrence (naive local) goes out, as a UTC instant (see the module doc)."""
    days, minutes = divmod(offset_minutes, 1440)
    return to_instant(occurrence - dt.timedelta(days=days), tz) - dt.timedelta(minutes=minutes)


@dataclass(frozen=True)
class Due:
    """One reminder of one occurrence: the occurrence start (local and as an instant) and the send time."""

    occurrence: dt.datetime  # naive local wall-clock
    starts_at: dt.datetime  # aware UTC
    send_at: dt.datetime  # aware UTC


def due_between(
    start: dt.datetime,
    recurrence: Recurrence,
    tz: ZoneInfo,
    offset_minutes: int,
    after: dt.datetime,
    until: dt.datetime,
) -> list[Due]:
    """Reminders whose send time is in (after, until] (aware instants), one per occurrence."""
    offset = dt.timedelta(minutes=offset_minutes)
    lo = to_local(after, tz) + offset - _MARGIN
    hi = to_local(until, tz) + offset + _MARGIN
    out = []
    for occ in occurrences(start, recurrence, lo, hi):
        send_at = send_time(occ, offset_minutes, tz)
        if after < send_at <= until:
            out.append(Due(occ, to_instant(occ, tz), send_at))
    return out


@dataclass(frozen=True)
class Window:
    """This run's reach: `end` is the run's time, `since` the previous successful run's end (None: first run)."""

    end: dt.datetime
    since: dt.datetime | None
    grace: dt.timedelta

    @property
    def cutoff(self) -> dt.datetime:
        """Reminders due at or before this instant are older than the grace period."""
        return self.end - self.grace

    @property
    def scan_from(self) -> dt.datetime:
        """Look at send times after this instant: back to the previous end (to report misses), or the grace."""
        if self.since is None or self.since >= self.cutoff:
            return self.cutoff
        return self.since

    def classify(self, send_at: dt.datetime) -> str | None:
        """'due' (new, send), 'missed' (new but too old), 'catch_up' (an earlier run's: send if still unsent), None."""
        if send_at > self.end or send_at <= self.scan_from:
            return None
        new = self.since is None or send_at > self.since
        if send_at <= self.cutoff:
            return "missed" if new else None
        return "due" if new else "catch_up"


@dataclass(frozen=True)
class SideSettings:
    """What one side (customer or operator) of a task gets: channel, offset, template; or why nothing."""

    channel: str | None
    offset_minutes: int | None
    template: str | None
    problem: str | None = None  # the skip reason when the reminder cannot be sent


def side_settings(task: Mapping, settings: Mapping, side: str) -> SideSettings:
    """The task's own channel/offset/template for this side, each falling back on the company default if enabled."""
    defaults = bool(settings.get(f"{side}_defaults_enabled"))
    channel = task.get(f"{side}_channel") or (settings.get(f"{side}_default_channel") if defaults else None)
    if channel not in CHANNELS:
        reason = f"no reminder channel for {side}s" if channel is None else f"unknown reminder channel {channel!r}"
        return SideSettings(None, None, None, reason)
    offset = task.get(f"{side}_offset_minutes")
    if offset is None and defaults:
        offset = settings.get(f"{side}_{channel}_offset_minutes")
    template = task.get(f"{side}_template") or (settings.get(f"{side}_{channel}_template") if defaults else None)
    problem = None
    if offset is None:
        problem = f"no {channel} reminder offset for {side}s"
    elif int(offset) < 0:
        problem = f"negative reminder offset ({offset} minutes)"
    elif not template:
        problem = f"no {channel} reminder template for {side}s"
    return SideSettings(channel, None if offset is None else int(offset), template, problem)


def sides_of(recipients: str | None) -> tuple[str, ...]:
    """Which sides a task's recipients mode reaches (customers only, operators only, both)."""
    try:
        return MODE_SIDES[recipients or "customers"]
    except KeyError:
        raise ValueError(f"recipients is customers, operators or both, not {recipients!r}") from None


def business_key(task_id: int, occurrence: dt.datetime, tz: ZoneInfo, side: str) -> str:
    """The ledger key of one reminder (the channel is a ledger column): task, occurrence start with its offset, side."""
    stamp = to_instant(occurrence, tz).astimezone(tz).isoformat(timespec="minutes")
    return f"task {task_id} / {stamp} / {side}"


def iter_due(
    task: Mapping, settings: Mapping, tz: ZoneInfo, window: Window
) -> Iterator[tuple[str, SideSettings, Due, str]]:
    """Every (side, settings, due reminder, class) of one task in the window; `class` as `Window.classify`.

    A side without usable settings is still reported, timed at the occurrence start (offset 0), so
    the company's log shows the task that could not be reminded and why.
    """
    recurrence = Recurrence(
        task.get("recurrence_freq"),
        int(task.get("recurrence_interval") or 1),
        task.get("recurrence_until"),
        task.get("recurrence_count"),
    )
    for side in sides_of(task.get("recipients")):
        s = side_settings(task, settings, side)
        offset = s.offset_minutes if s.problem is None else 0
        for due in due_between(task["starts_at"], recurrence, tz, offset or 0, window.scan_from, window.end):
            kind = window.classify(due.send_at)
            if kind is not None:
                yield side, s, due, kind
