"""Time as the state store keeps it: UTC, ISO 8601 with microseconds and a ``Z``, so that text order is time
order in SQLite and Postgres alike."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


def elapsed_ms(since: float) -> float:
    """Milliseconds since ``since`` (a ``time.perf_counter()``), to the microsecond: what a timing reports."""
    return round((time.perf_counter() - since) * 1000, 3)


def utc_now() -> str:
    return stamp(datetime.now(UTC))


def stamp(moment: datetime) -> str:
    # isoformat pads the year to four digits (strftime's %Y does not below 1000), so text order stays time order.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


def parse_moment(text: str) -> datetime:
    """A moment a person typed: ``2026-11-27``, ``2026-11-27T05:00``, an ISO time with offset (UTC when none),
    or a duration ago: ``90s``, ``15m``, ``24h``, ``30d``. ``ValueError`` says what was expected."""
    text = text.strip()
    try:
        ago = parse_duration(text, required=False)
        if ago is not None:
            return datetime.now(UTC) - ago
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a time out of datetime's range once in UTC
        raise ValueError(f"expected a date (2026-11-27), an ISO time or a duration like 24h or 30d: {text!r}") from None


def parse_duration(text: str, required: bool = True) -> timedelta | None:
    """``90s``, ``15m``, ``24h``, ``30d`` as a timedelta (None when ``text`` is not one and not ``required``)."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    number, unit = text[:-1], text[-1:]
    if unit in units and number.isdigit() and 0 < int(number) < 10**8:  # beyond: past datetime's range anyway
        return timedelta(**{units[unit]: int(number)})
    if required:
        raise ValueError(f"expected a duration like 90s, 15m, 24h or 30d: {text!r}")
    return None


def day_of(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime) -> datetime:
    start = month_start(moment)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
