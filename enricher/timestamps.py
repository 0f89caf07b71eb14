"""Event times, expiry dates and GDF instrument names, read once at the edge.

Every function here raises `ValueError` on input it cannot read; `messages` turns
that into a reason code.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from math import isfinite
from typing import Final

from enricher.records import utc_iso

# A year outside this range is a corrupted or hostile field, never a real event,
# and rejecting it here keeps date arithmetic downstream from overflowing.
MIN_YEAR: Final = 1970
MAX_YEAR: Final = 2200

_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1
    )
}
_OPTION_TYPES: Final = {"CE": "CALL", "PE": "PUT"}


def parse_event_time(text: str, feed_tz: tzinfo) -> datetime:
    """An ISO-8601 time as an aware UTC datetime.

    A naive time is wall-clock time in `feed_tz` (the synthetic feed sends local
    time without an offset); a time with an offset or `Z` keeps its own offset.
    """
    return parse_event_instant(text, feed_tz)[0]


def parse_event_instant(text: str, feed_tz: tzinfo) -> tuple[datetime, str]:
    """`parse_event_time`, and the instant's stamp: `records.utc_iso` of it.

    Both come from the naive UTC time: its isoformat() costs half an aware one's, and
    every message needs the stamp (its identity and its cache version).
    """
    if not isinstance(text, str):
        raise ValueError(f"a timestamp must be a string, not {type(text).__name__}")
    if "\x00" in text:  # CPython 3.11's fromisoformat ignores a trailing NUL
        raise ValueError(f"timestamp {text!r} contains NUL")
    moment = datetime.fromisoformat(text)
    zone = moment.tzinfo
    offset = (feed_tz if zone is None else zone).utcoffset(moment)
    if offset is None:  # a tzinfo that does not know its offset
        raise ValueError(f"no UTC offset for timestamp {text!r}")
    if zone is not None:  # combine() rather than replace(): a third of the cost
        moment = datetime.combine(moment.date(), moment.time())
    try:
        naive = moment - offset
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00 has no UTC equivalent
        raise ValueError(f"timestamp {text!r} is out of range") from exc
    if not MIN_YEAR <= naive.year <= MAX_YEAR:
        raise ValueError(f"timestamp {text!r} is outside {MIN_YEAR}..{MAX_YEAR}")
    return datetime.combine(naive.date(), naive.time(), UTC), _stamp(text, zone, feed_tz, offset, naive)


# The feed's local minutes, as the UTC minutes they are: (zone, text[:16]) -> "YYYY-MM-DDTHH:MM".
_UTC_MINUTES: dict[tuple[tzinfo, str], str] = {}
_UTC_MINUTES_MAX: Final = 4096
_MINUTE: Final = timedelta(minutes=1)


def _stamp(text: str, zone: tzinfo | None, feed_tz: tzinfo, offset: timedelta, naive: datetime) -> str:
    """`records.utc_iso` of the instant, `naive` in UTC. A naive time spelled to the microsecond
    in the feed's zone, whose offset is whole minutes, keeps its seconds through the conversion:
    its stamp is its minute's, looked up once a minute, and its own ":SS.ffffff" (0.1 µs; an
    isoformat() costs 0.4)."""
    if zone is None and len(text) == 26 and text[16] == ":" and text[19] == "." and not offset % _MINUTE:
        key = (feed_tz, text[:16])
        minute = _UTC_MINUTES.get(key)
        if minute is None:
            if len(_UTC_MINUTES) >= _UTC_MINUTES_MAX:
                _UTC_MINUTES.clear()
            minute = _UTC_MINUTES[key] = naive.isoformat(timespec="minutes")
        return f"{minute}{text[16:]}+00:00"
    return utc_iso(naive) + "+00:00"  # utc_iso's spelling, of the naive time: half the cost


def parse_expiry(text: str) -> str:
    """A synthetic-feed expiry, which must be spelled exactly `YYYY-MM-DD`.

    Not cached here: `fields.expiry_date`, its caller, remembers the valid ones."""
    if not isinstance(text, str):
        raise ValueError(f"an expiry must be a string, not {type(text).__name__}")
    # date.fromisoformat alone would also take '20250123' and week dates; the
    # length and dash checks hold the feed to the one spelling used in keys.
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        raise ValueError(f"expiry {text!r} is not YYYY-MM-DD")
    day = date.fromisoformat(text)
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise ValueError(f"expiry {text!r} is outside {MIN_YEAR}..{MAX_YEAR}")
    return day.isoformat()


def expiry_from_instrument(name: str) -> tuple[str, str, float, str]:
    """`(product, expiry, strike, option_type)` from a GDF name like `NIFTY_23JAN2025_21500_CE`."""
    if not isinstance(name, str):
        raise ValueError(f"an instrument must be a string, not {type(name).__name__}")
    return _instrument(name)


# Names repeat in every chain of a product, so a hit saves the date and float parsing.
@lru_cache(maxsize=8192)
def _instrument(name: str) -> tuple[str, str, float, str]:
    # Split from the right: a product may itself contain '_'.
    parts = name.rsplit("_", 3)
    if len(parts) != 4:
        raise ValueError(f"instrument {name!r} is not PRODUCT_DDMONYYYY_STRIKE_CE|PE")
    product, day_text, strike_text, kind = parts
    option_type = _OPTION_TYPES.get(kind)
    if option_type is None:
        raise ValueError(f"instrument {name!r} is neither CE nor PE")
    month = _MONTHS.get(day_text[2:5])
    digits = day_text[:2] + day_text[5:]
    if len(day_text) != 9 or month is None or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"instrument {name!r} has no DDMONYYYY expiry")
    day = date(int(day_text[5:]), month, int(day_text[:2]))
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise ValueError(f"instrument {name!r} expires outside {MIN_YEAR}..{MAX_YEAR}")
    # float() alone would take 'nan', 'inf', ' 1' and '1_000'.
    if not (strike_text.isascii() and strike_text.replace(".", "", 1).isdigit()):
        raise ValueError(f"instrument {name!r} has no numeric strike")
    strike = float(strike_text)
    if not (isfinite(strike) and strike > 0):
        raise ValueError(f"instrument {name!r} has a strike that is not positive and finite")
    return product, day.isoformat(), strike, option_type
