"""SurfaceBook keeps each expiry's snapshot entry until that expiry changes: the snapshot must
still be exactly what a book built from scratch gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from enricher.analytics.model import ModelConfig, model_chain
from enricher.analytics.surface import SurfaceBook
from enricher.feed.synthetic import SyntheticFeed
from enricher.messages import parse
from enricher.records import Chain, Quote

START = datetime(2025, 1, 20, 4, 0, tzinfo=UTC)
EXPIRIES = ("2025-01-23", "2025-01-30")


def quote(expiry: str, strike: float, option_type: str, iv: float, seconds: int) -> Quote:
    return Quote(
        symbol=f"NIFTY{expiry.replace('-', '')}{option_type[0]}{int(strike)}",
        product="NIFTY",
        expiry=expiry,
        strike=strike,
        option_type=option_type,
        bid=1.0,
        ask=1.1,
        last=1.05,
        volume=1,
        open_interest=1,
        iv=iv,
        timestamp=START + timedelta(seconds=seconds),
        doc={},
    )


updates = st.lists(
    st.tuples(
        st.sampled_from(EXPIRIES),
        st.sampled_from([23_000.0, 23_050.0, 23_100.0]),
        st.sampled_from(["CALL", "PUT"]),
        st.floats(0.01, 2.0),
        st.integers(0, 5),
    ),
    max_size=12,
)


@given(updates)
def test_a_snapshot_after_every_update_ends_as_one_taken_only_at_the_end(
    sequence: list[tuple[str, float, str, float, int]],
) -> None:
    watched, fresh = SurfaceBook(), SurfaceBook()
    for expiry, strike, option_type, iv, seconds in sequence:
        for book in (watched, fresh):
            book.apply_quote(quote(expiry, strike, option_type, iv, seconds), "t", iv)
        watched.snapshot("NIFTY")
        watched.points("NIFTY", 100)
    assert watched.snapshot("NIFTY") == fresh.snapshot("NIFTY")
    assert watched.points("NIFTY", 100) == fresh.points("NIFTY", 100)


def test_a_quote_rebuilds_its_own_expiry_only() -> None:
    feed = SyntheticFeed(seed=1, start=START)
    [(channel, payload)] = feed.chain("NIFTY")
    chain = parse(channel, payload, feed_tz=UTC)
    assert isinstance(chain, Chain)
    model, _ = model_chain(chain, ModelConfig(), None)
    book = SurfaceBook()
    book.apply_model(chain, model, "t")
    other = "2099-01-01"
    book.apply_quote(quote(other, 23_000.0, "CALL", 0.2, 0), "t", 0.2)
    before = book.snapshot("NIFTY")
    assert before is not None
    strike = chain.strikes[10]
    book.apply_quote(quote(chain.expiry, float(strike), "CALL", 0.5, 3600), "t", 0.5)
    book.apply_quote(quote(chain.expiry, float(strike), "PUT", 0.5, 3600), "t", 0.5)
    after = book.snapshot("NIFTY")
    assert after is not None
    [changed] = [entry for entry in after["expiries"] if entry["expiry"] == chain.expiry]
    assert changed["ivs"][changed["strikes"].index(strike)] == 0.5
    assert after["expiries"][-1] is before["expiries"][-1]  # the other expiry: the same entry, not rebuilt
    members = book.points("NIFTY", 3)
    assert len(members) == 3
    assert [score for _, score in members] == changed["strikes"][:3]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["2025-01-20", "2025-01-21", "2025-01-23", "2025-01-30", "2025-02-06"]),
            st.integers(0, 4 * 86_400),  # event times over four days: expiries pass
        ),
        max_size=20,
    )
)
def test_expiries_are_pruned_as_if_after_every_quote(sequence: list[tuple[str, int]]) -> None:
    """The book skips pruning while neither the day nor its expiries changed: it must keep
    the expiries that pruning after every applied quote keeps (none past, at most 3)."""
    book, kept = SurfaceBook(max_expiries=3), dict[str, int]()  # expiry -> its latest update
    for expiry, seconds in sequence:
        book.apply_quote(quote(expiry, 23_000.0, "CALL", 0.2, seconds), "t", 0.2)
        if kept.get(expiry, -1) > seconds:
            continue  # older than what it would replace: ignored
        kept[expiry] = seconds
        today = (START + timedelta(seconds=seconds)).date().isoformat()
        kept = {e: t for e, t in kept.items() if e >= today}
        while len(kept) > 3:
            del kept[max(kept)]
        assert {entry["expiry"] for entry in book.snapshot("NIFTY")["expiries"]} == set(kept)  # type: ignore[index]
