"""The `clock` MCP server: the current time in any IANA time zone, conversions and date arithmetic.

Times go in and out as ISO 8601 ("2025-06-01T14:30:00+02:00", "2025-06-01"). Time zones come from
the standard library's zoneinfo, which reads the system's tz database (or the `tzdata` package where
the system has none). Arithmetic follows what people mean: days, weeks, months and years move the
calendar (the same wall-clock time, even across a daylight-saving change; Jan 31 plus one month is
the last day of February), while hours, minutes and seconds are elapsed time.

"Now" comes from a callable that tests may replace (`build_server(now=...)`).
"""

from __future__ import annotations

import argparse
import calendar
import difflib
import os
import re
import zoneinfo
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Annotated, Literal

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from runtime.errors import MiniCPMError

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)
CALENDAR_UNITS = ("days", "weeks", "months", "years")

Unit = Literal["seconds", "minutes", "hours", "days", "weeks", "months", "years"]


class ClockError(ValueError):
    """A time, date, zone or amount the clock cannot use; the message says which and why."""


# ----------------------------------------------------------------------------------------- zones


def _system_zone() -> tzinfo:
    """This machine's zone as an IANA zone when it can be named ($TZ, /etc/localtime), else its fixed offset."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        link = Path("/etc/localtime").resolve()
        if "zoneinfo" in link.parts:
            candidates.append("/".join(link.parts[link.parts.index("zoneinfo") + 1:]))
    except OSError:
        pass
    for key in candidates:
        if key:
            try:
                return zoneinfo.ZoneInfo(key)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                continue
    return datetime.now().astimezone().tzinfo or UTC


def _zone_name(zone: tzinfo, when: datetime) -> str:
    return getattr(zone, "key", None) or when.tzname() or str(zone)


def lookup_zone(name: str, local: tzinfo) -> tzinfo:
    """An IANA zone ('Europe/Paris'), 'UTC', 'local', or a fixed offset ('+05:30', 'UTC-3')."""
    key = name.strip()
    if key.lower() == "local":
        return local
    if key.upper() in ("UTC", "Z", "GMT"):
        return UTC
    match = OFFSET.match(key)
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta > timedelta(hours=14):
            raise ClockError(f"the offset '{name}' is out of range (-14:00 to +14:00)")
        return timezone(-delta if sign == "-" else delta)
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    names = zoneinfo.available_timezones()
    folded = {zone.lower(): zone for zone in names}
    if key.lower() in folded:  # 'europe/paris'
        return zoneinfo.ZoneInfo(folded[key.lower()])
    hint = difflib.get_close_matches(key, sorted(names), n=3)
    if not names:
        raise ClockError(
            f"unknown time zone '{name}': this machine has no time zone database (install the tzdata package)"
        )
    suggestion = f"did you mean {', '.join(repr(h) for h in hint)}? " if hint else ""
    raise ClockError(
        f"unknown time zone '{name}'; {suggestion}use an IANA name such as 'Europe/Paris' or "
        "'America/New_York', 'UTC', 'local', or an offset such as '+05:30'"
    )


# ----------------------------------------------------------------------------------------- parsing


def parse_when(text: str, now: datetime) -> date | datetime:
    """An ISO 8601 date or date-time, or 'now' / 'today' / 'tomorrow' / 'yesterday' (local time)."""
    value = text.strip()
    word = value.lower()
    if word == "now":
        return now
    if word in ("today", "tomorrow", "yesterday"):
        return now.date() + timedelta(days={"today": 0, "tomorrow": 1, "yesterday": -1}[word])
    try:
        return date.fromisoformat(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ClockError(
            f"cannot read '{text}' as a date or time; use ISO 8601, e.g. '2025-06-01', '2025-06-01T14:30', "
            "'2025-06-01T14:30:00+02:00' or '2025-06-01T12:30:00Z', or the word 'now' or 'today'"
        ) from None


def _localize(naive: datetime, zone: tzinfo) -> tuple[datetime, str | None]:
    """Attach a zone to a wall-clock time, with a note when that time is skipped or repeated there."""
    aware = naive.replace(tzinfo=zone)
    back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != naive:
        return aware, (f"{naive.isoformat()} does not exist in {_zone_name(zone, aware)} (the clocks jump forward "
                       f"then); it was read as {aware.astimezone(UTC).astimezone(zone).isoformat()}")
    if aware.replace(fold=1).utcoffset() != aware.utcoffset():
        return aware, (f"{naive.isoformat()} happens twice in {_zone_name(zone, aware)} (the clocks go back then); "
                       "the first one was used")
    return aware, None


def _add_months(moment: date | datetime, months: int) -> date | datetime:
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    if not 1 <= year <= 9999:
        raise ClockError("the result is outside the years 1 to 9999")
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def _plural(count: float, word: str) -> str:
    return f"{count:g} {word}" + ("" if count == 1 else "s")


# ----------------------------------------------------------------------------------------- results


class TimeInfo(BaseModel):
    iso: str = Field(description="ISO 8601 date-time with its UTC offset")
    timezone: str = Field(description="the IANA zone name (or the offset)")
    abbreviation: str | None = Field(description="the zone's abbreviation at that moment, e.g. CEST")
    utc_offset: str = Field(description="offset from UTC, e.g. +02:00")
    weekday: str
    unix_seconds: float = Field(description="seconds since 1970-01-01T00:00:00Z")
    note: str | None = Field(default=None, description="set when the given wall-clock time was skipped or repeated by a DST change")


class Shifted(BaseModel):
    start: str
    result: str = Field(description="ISO 8601; a date when a date was given and the unit is days or longer")
    weekday: str
    note: str | None = None


class Between(BaseModel):
    start: str
    end: str
    total_seconds: float = Field(description="end minus start; negative when end is earlier")
    total_days: float
    years: int = Field(description="calendar breakdown: whole years ...")
    months: int = Field(description="... then whole months ...")
    days: int = Field(description="... then whole days ...")
    hours: int
    minutes: int
    seconds: float
    text: str = Field(description="the breakdown in words, e.g. '1 year, 2 months and 3 days'")


class DayInfo(BaseModel):
    date: str
    weekday: str
    iso_weekday: int = Field(description="1 = Monday ... 7 = Sunday")
    iso_week: int
    iso_year: int
    day_of_year: int
    is_weekend: bool


def _time_info(moment: datetime, note: str | None = None) -> TimeInfo:
    offset = moment.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = int(abs(offset).total_seconds() // 60)
    return TimeInfo(
        iso=moment.isoformat(), timezone=_zone_name(moment.tzinfo, moment), abbreviation=moment.tzname(),
        utc_offset=f"{sign}{minutes // 60:02d}:{minutes % 60:02d}", weekday=moment.strftime("%A"),
        unix_seconds=moment.timestamp(), note=note,
    )


# ----------------------------------------------------------------------------------------- server


def build_server(now: Callable[[], datetime] | None = None, local_timezone: str | None = None) -> FastMCP:
    """The clock server. `now` returns the current time (aware; naive is taken as UTC); `local_timezone`
    names the zone that 'local' means (default: this machine's)."""
    if local_timezone:
        try:
            local = lookup_zone(local_timezone, UTC)
        except ClockError as exc:
            raise MiniCPMError(f"--timezone: {exc}") from None
    else:
        local = _system_zone()
    clock = now or (lambda: datetime.now(UTC))

    def current() -> datetime:
        moment = clock()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(local)

    def parse(text: str) -> date | datetime:
        return parse_when(text, current())

    def aware(moment: date | datetime, zone: tzinfo) -> tuple[datetime, str | None]:
        if not isinstance(moment, datetime):
            moment = datetime.combine(moment, datetime.min.time())
        if moment.tzinfo is None:
            return _localize(moment, zone)
        return moment, None

    server = FastMCP(
        "clock",
        instructions=("The current date and time, time zone conversion and date arithmetic. Times are ISO 8601; "
                      f"'local' is {_zone_name(local, current())}."),
        log_level="WARNING",
    )

    @server.tool(annotations=READ_ONLY)
    def current_time(
        timezone: Annotated[str, Field(description="IANA time zone such as 'Europe/Paris' or 'Asia/Tokyo', 'UTC', an offset such as '+05:30', or 'local' (this computer's zone)")] = "local",
    ) -> TimeInfo:
        """The current date and time in a time zone, with its UTC offset and weekday."""
        return _time_info(current().astimezone(lookup_zone(timezone, local)))

    @server.tool(annotations=READ_ONLY)
    def convert_time(
        time: Annotated[str, Field(description="ISO 8601 date-time, e.g. '2025-06-01T14:30' or '2025-06-01T14:30:00+02:00', or 'now'")],
        to_timezone: Annotated[str, Field(description="zone to convert to: IANA name ('America/New_York'), 'UTC', 'local' or an offset ('+05:30')")],
        from_timezone: Annotated[str, Field(description="zone the time is in, used only when the time has no UTC offset of its own (default 'local')")] = "local",
    ) -> TimeInfo:
        """Convert a date-time from one time zone to another (daylight saving time is taken into account)."""
        target = lookup_zone(to_timezone, local)
        moment, note = aware(parse(time), lookup_zone(from_timezone, local))
        return _time_info(moment.astimezone(target), note)

    @server.tool(annotations=READ_ONLY)
    def shift_time(
        time: Annotated[str, Field(description="ISO 8601 date ('2025-01-31') or date-time ('2025-01-31T09:00+01:00'), or 'now' / 'today'")],
        amount: Annotated[float, Field(description="how much to add; negative to subtract. Whole numbers for days, weeks, months and years")],
        unit: Annotated[Unit, Field(description="unit of amount")],
    ) -> Shifted:
        """Add (or subtract) a duration to a date or date-time.

        days, weeks, months and years move the calendar and keep the wall-clock time (a month after
        Jan 31 is the last day of February); seconds, minutes and hours are elapsed time, so adding
        24 hours across a daylight-saving change lands at a different wall-clock hour.
        """
        start = parse(time)
        if unit in CALENDAR_UNITS and not float(amount).is_integer():
            raise ClockError(f"{unit} must be shifted by a whole number (got {amount}); use a smaller unit for fractions")
        note = None
        try:
            if unit in CALENDAR_UNITS:
                whole = int(amount)
                if unit == "months":
                    result = _add_months(start, whole)
                elif unit == "years":
                    result = _add_months(start, 12 * whole)
                else:
                    result = start + timedelta(days=whole * (7 if unit == "weeks" else 1))
                if isinstance(result, datetime) and isinstance(result.tzinfo, zoneinfo.ZoneInfo):
                    result, note = _localize(result.replace(tzinfo=None), result.tzinfo)
            else:
                delta = timedelta(**{unit: amount})
                if not isinstance(start, datetime):
                    start = datetime.combine(start, datetime.min.time())
                if start.tzinfo is None:
                    result = start + delta
                else:
                    result = (start.astimezone(UTC) + delta).astimezone(start.tzinfo)
        except OverflowError:
            raise ClockError("the result is outside the years 1 to 9999") from None
        return Shifted(start=start.isoformat(), result=result.isoformat(), weekday=result.strftime("%A"), note=note)

    @server.tool(annotations=READ_ONLY)
    def time_between(
        start: Annotated[str, Field(description="ISO 8601 date or date-time, or 'now' / 'today'")],
        end: Annotated[str, Field(description="ISO 8601 date or date-time, or 'now' / 'today'")],
    ) -> Between:
        """How long from start to end: in total seconds and days, and as years, months, days, hours, minutes.

        A time without a UTC offset is read in the local zone when the other one has an offset.
        Negative when end is before start.
        """
        first, second = parse(start), parse(end)
        shown = (first.isoformat(), second.isoformat())
        if isinstance(first, datetime) or isinstance(second, datetime):
            first = first if isinstance(first, datetime) else datetime.combine(first, datetime.min.time())
            second = second if isinstance(second, datetime) else datetime.combine(second, datetime.min.time())
            if (first.tzinfo is None) != (second.tzinfo is None):
                first, _ = aware(first, local)
                second, _ = aware(second, local)
            if first.tzinfo is not None:
                second = second.astimezone(first.tzinfo)
                total = (second.astimezone(UTC) - first.astimezone(UTC)).total_seconds()
            else:
                total = (second - first).total_seconds()
        else:
            total = float((second - first).days * 86400)
        sign = -1 if total < 0 else 1
        low, high = (first, second) if sign > 0 else (second, first)
        months = (high.year - low.year) * 12 + high.month - low.month
        if months and _add_months(low, months) > high:
            months -= 1
        anchor = _add_months(low, months)
        if isinstance(low, datetime):
            rest = (high.replace(tzinfo=None) - anchor.replace(tzinfo=None)).total_seconds()
        else:
            rest = float((high - anchor).days * 86400)
        days, rest = divmod(rest, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        years, months = divmod(months, 12)
        parts = [(years, "year"), (months, "month"), (int(days), "day"), (int(hours), "hour"), (int(minutes), "minute")]
        words = [_plural(count, word) for count, word in parts if count]
        if seconds:
            words.append(_plural(round(seconds, 3), "second"))
        text = "no time" if not words else words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        return Between(
            start=shown[0], end=shown[1], total_seconds=total, total_days=total / 86400,
            years=sign * years, months=sign * months, days=sign * int(days), hours=sign * int(hours),
            minutes=sign * int(minutes), seconds=sign * seconds + 0.0,
            text=text + (" before" if sign < 0 and words else ""),
        )

    @server.tool(annotations=READ_ONLY)
    def day_of_week(
        date: Annotated[str, Field(description="ISO 8601 date such as '2025-12-25' (a date-time works too), or 'today'")],
    ) -> DayInfo:
        """The weekday of a date, with its ISO week number and day of the year."""
        moment = parse(date)
        day = moment.date() if isinstance(moment, datetime) else moment
        iso = day.isocalendar()
        return DayInfo(date=day.isoformat(), weekday=day.strftime("%A"), iso_weekday=iso.weekday, iso_week=iso.week,
                       iso_year=iso.year, day_of_year=day.timetuple().tm_yday, is_weekend=iso.weekday >= 6)

    return server


# ----------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timezone", default=None, metavar="ZONE",
                        help="the zone that 'local' means, e.g. Europe/Paris (default: this machine's zone)")


def build(args: argparse.Namespace) -> FastMCP:
    return build_server(local_timezone=args.timezone)
