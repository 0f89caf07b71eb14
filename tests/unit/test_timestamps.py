from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enricher.records import utc_iso
from enricher.timestamps import expiry_from_instrument, parse_event_instant, parse_event_time, parse_expiry

KOLKATA = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("text", "feed_tz", "expected"),
    [
        # naive: the feed's wall clock
        ("2025-01-20T10:15:30", KOLKATA, datetime(2025, 1, 20, 4, 45, 30, tzinfo=UTC)),
        ("2025-01-20T10:15:30.123456", UTC, datetime(2025, 1, 20, 10, 15, 30, 123456, tzinfo=UTC)),
        ("2025-07-01T09:30:00", NEW_YORK, datetime(2025, 7, 1, 13, 30, tzinfo=UTC)),  # EDT
        ("2025-01-02T09:30:00", NEW_YORK, datetime(2025, 1, 2, 14, 30, tzinfo=UTC)),  # EST
        # an explicit offset wins over the feed's zone
        ("2025-01-20T10:15:30Z", KOLKATA, datetime(2025, 1, 20, 10, 15, 30, tzinfo=UTC)),
        ("2025-01-20T10:15:30+05:30", NEW_YORK, datetime(2025, 1, 20, 4, 45, 30, tzinfo=UTC)),
        ("2025-01-20T10:15:30.5-02:00", UTC, datetime(2025, 1, 20, 12, 15, 30, 500000, tzinfo=UTC)),
        ("2025-01-20 10:15:30", UTC, datetime(2025, 1, 20, 10, 15, 30, tzinfo=UTC)),
    ],
)
def test_event_time(text: str, feed_tz: ZoneInfo, expected: datetime) -> None:
    moment = parse_event_time(text, feed_tz)
    assert moment == expected
    assert moment.utcoffset() == timedelta(0)
    assert moment.tzinfo is UTC


def test_naive_and_offset_spellings_of_one_instant_agree() -> None:
    naive = parse_event_time("2025-01-20T10:15:30.123456", KOLKATA)
    offset = parse_event_time("2025-01-20T04:45:30.123456+00:00", NEW_YORK)
    assert naive == offset
    assert naive.isoformat() == offset.isoformat()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2025-13-01T00:00:00",
        "2025-02-30T00:00:00",
        "2025-01-20T25:00:00",
        "１９７０-01-01T00:00:00",  # fullwidth digits
        "1969-12-31T23:59:59Z",
        "2201-01-01T00:00:00",
        "0001-01-01T00:00:00+01:00",  # no UTC equivalent at all
        "9999-12-31T23:59:59-01:00",
        "1970-01-01T00:30:00+05:30",  # 1969 in UTC
        "2025-01-20T10:15:30\x00",
        "\ud800",
    ],
)
def test_bad_event_time(text: str) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        parse_event_time(text, UTC)
    assert not isinstance(caught.value, OverflowError)


@pytest.mark.parametrize("value", [None, 1737368130, 1.5, b"2025-01-20", ["2025-01-20"]])
def test_event_time_must_be_a_string(value: object) -> None:
    with pytest.raises(ValueError, match="string"):
        parse_event_time(value, UTC)  # type: ignore[arg-type]


def test_year_bounds_are_inclusive() -> None:
    assert parse_event_time("1970-01-01T00:00:00Z", UTC).year == 1970
    assert parse_event_time("2200-12-31T23:59:59Z", UTC).year == 2200


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_event_time_raises_only_value_error(text: str) -> None:
    try:
        moment = parse_event_time(text, KOLKATA)
    except ValueError:
        return
    assert moment.tzinfo is UTC
    assert 1970 <= moment.year <= 2200


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2199, 1, 1)))
def test_naive_round_trip(moment: datetime) -> None:
    parsed = parse_event_time(moment.isoformat(), timezone(timedelta(hours=-3)))
    assert parsed == moment.replace(tzinfo=UTC) + timedelta(hours=3)


def _reference_instant(text: str, feed_tz: ZoneInfo | timezone) -> datetime:
    """The conversion as the standard library spells it: attach the zone, then astimezone."""
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=feed_tz)).astimezone(UTC)


_ZONES = [UTC, KOLKATA, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), timezone(timedelta(hours=-3, minutes=-7))]


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2199, 1, 1)),
    st.sampled_from(_ZONES),
    st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]),
    st.sampled_from(["auto", "seconds", "milliseconds"]),
)
def test_event_instant_is_the_zone_conversion_and_its_stamp_is_utc_iso(
    moment: datetime, feed_tz: ZoneInfo | timezone, offset: timezone | None, timespec: str
) -> None:
    # Naive (the feed's wall clock, DST gaps and folds included) or with its own offset.
    text = moment.replace(tzinfo=offset).isoformat(timespec=timespec)
    parsed, stamp = parse_event_instant(text, feed_tz)
    expected = _reference_instant(text, feed_tz)
    assert parsed == expected
    assert parsed.tzinfo is UTC
    assert stamp == utc_iso(expected)
    assert parse_event_time(text, feed_tz) == parsed


@pytest.mark.parametrize(
    ("text", "feed_tz", "stamp"),
    [
        # one local minute in two zones: the minute cache is per zone
        ("2025-01-20T10:15:30.123456", KOLKATA, "2025-01-20T04:45:30.123456+00:00"),
        ("2025-01-20T10:15:30.123456", NEW_YORK, "2025-01-20T15:15:30.123456+00:00"),
        ("2025-01-20T10:15:59.999999", KOLKATA, "2025-01-20T04:45:59.999999+00:00"),
        # spellings fromisoformat takes whose seconds are not ":SS.ffffff", or whose minute is not
        # "YYYY-MM-DDTHH:MM", are still stamped canonically
        ("2025-01-20T10:15:30,123456", KOLKATA, "2025-01-20T04:45:30.123456+00:00"),
        ("2025-W04-1T10:15:30.123456", KOLKATA, "2025-01-20T04:45:30.123456+00:00"),
        ("2025-01-20 10:15:30.123456", KOLKATA, "2025-01-20T04:45:30.123456+00:00"),
        ("2025-01-20T10:15:30", KOLKATA, "2025-01-20T04:45:30.000000+00:00"),
        # an offset of whole seconds (Monrovia until 1972) moves the seconds too
        ("1971-06-01T10:15:30.123456", ZoneInfo("Africa/Monrovia"), "1971-06-01T11:00:00.123456+00:00"),
    ],
)
def test_event_instant_stamps(text: str, feed_tz: ZoneInfo, stamp: str) -> None:
    for _ in range(2):  # the second time from the minute cache
        assert parse_event_instant(text, feed_tz)[1] == stamp


def test_expiry() -> None:
    assert parse_expiry("2025-01-23") == "2025-01-23"


@pytest.mark.parametrize(
    "value",
    [
        "20250123",
        "2025-1-23",
        "2025-01-32",
        "2025-W04-4",
        "23-01-2025",
        "1969-12-31",
        "2201-01-01",
        "",
        20250123,
        None,
    ],
)
def test_bad_expiry(value: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_expiry(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NIFTY_23JAN2025_21500_CE", ("NIFTY", "2025-01-23", 21500.0, "CALL")),
        ("NIFTY_23JAN2025_21500_PE", ("NIFTY", "2025-01-23", 21500.0, "PUT")),
        ("BANKNIFTY_05DEC2024_51000.5_PE", ("BANKNIFTY", "2024-12-05", 51000.5, "PUT")),
        ("M&M_27FEB2025_2900_CE", ("M&M", "2025-02-27", 2900.0, "CALL")),
        ("NIFTY_NEXT_50_27FEB2025_70000_CE", ("NIFTY_NEXT_50", "2025-02-27", 70000.0, "CALL")),
    ],
)
def test_instrument(name: str, expected: tuple[str, str, float, str]) -> None:
    assert expiry_from_instrument(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "NIFTY",
        "NIFTY_23JAN2025_21500",
        "NIFTY_23JAN2025_21500_XE",
        "NIFTY_23JAN2025_21500_ce",
        "NIFTY_23Jan2025_21500_CE",
        "NIFTY_32JAN2025_21500_CE",
        "NIFTY_29FEB2025_21500_CE",
        "NIFTY_2JAN2025_21500_CE",
        "NIFTY_23JAN1969_21500_CE",
        "NIFTY_23JAN2025_0_CE",
        "NIFTY_23JAN2025_-100_CE",
        "NIFTY_23JAN2025_nan_CE",
        "NIFTY_23JAN2025_inf_CE",
        "NIFTY_23JAN2025_1e5_CE",
        "NIFTY_23JAN2025_ 21500_CE",
        "NIFTY_23JAN2025_21_500_CE",
        "NIFTY_23JAN2025_٢١٥٠٠_CE",
        "NIFTY_23JAN2025_" + "9" * 400 + "_CE",
    ],
)
def test_bad_instrument(name: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        expiry_from_instrument(name)


@pytest.mark.parametrize("value", [None, 21500, ["NIFTY_23JAN2025_21500_CE"]])
def test_instrument_must_be_a_string(value: object) -> None:
    with pytest.raises(ValueError, match="string"):
        expiry_from_instrument(value)  # type: ignore[arg-type]


@given(st.datetimes(timezones=st.just(UTC)))
def test_utc_iso_is_one_fixed_width_spelling(moment: datetime) -> None:
    assert utc_iso(moment) == moment.isoformat(timespec="microseconds")
    assert len(utc_iso(moment)) == len("2025-01-20T04:00:00.000000+00:00")
