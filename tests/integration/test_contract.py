"""CONTRACT.md §2–§5 end to end: sample messages in, every key, channel and document out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from vollib.black.implied_volatility import implied_volatility as black_iv

from enricher.app import Enricher
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from tests.conftest import sample, wait_for
from tests.integration.helpers import listening, publish, surface_at, with_fields

# BSON dates hold milliseconds, so MongoDB (and SecantusDB) keep 10:15:30.123 of .123456.
EVENT_TIME = datetime(2025, 1, 20, 10, 15, 30, 123000, tzinfo=UTC)
StartApp = Callable[..., Awaitable[Enricher]]
Mongo = AsyncMongoClient[dict[str, Any]]


async def stored(mongo: Mongo, db: str, collection: str, expected: int) -> None:
    async def enough() -> bool:
        return await mongo[db][collection].count_documents({}) >= expected

    await wait_for(enough, what=f"{expected} documents in {collection}")


async def get_json(redis: Redis, key: str) -> Any:
    raw = await redis.get(key)
    assert raw is not None, f"{key} is missing"
    return orjson.loads(raw)


async def test_tick_outputs(start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str, redis_base_url: str) -> None:
    app = await start_app()
    async with listening(redis_base_url, "enriched:underlying") as heard:
        await publish(redis, UNDERLYING, sample("synthetic_underlying.json"))
        await wait_for(lambda: len(heard.on("enriched:underlying")) == 1, what="enriched tick")
        await stored(mongo, db_name, "underlying_ticks", 1)

    event = heard.on("enriched:underlying")[0]
    assert event["type"] == "UNDERLYING_ENRICHED"
    assert (event["product"], event["price"], event["timestamp"]) == (
        "NIFTY",
        21503.45,
        "2025-01-20T10:15:30.123456",
    )
    assert datetime.fromisoformat(event["processed_at"]).tzinfo is not None

    assert await get_json(redis, "latest:underlying:NIFTY") == {
        "price": 21503.45,
        "timestamp": "2025-01-20T10:15:30.123456",
    }
    assert 290 < await redis.ttl("latest:underlying:NIFTY") <= 300
    for window in (1, 5, 15):
        candle = await get_json(redis, f"ohlc:NIFTY:{window}m")
        assert set(candle) == {
            "product", "window_minutes", "open", "high", "low", "close", "start_time", "end_time", "num_ticks",
        }  # fmt: skip
        assert candle["window_minutes"] == window
        assert candle["open"] == candle["close"] == 21503.45
        assert candle["num_ticks"] == 1
        assert candle["start_time"].startswith("2025-01-20T10:15:00")
        assert window * 60 - 10 < await redis.ttl(f"ohlc:NIFTY:{window}m") <= window * 60

    doc = await mongo[db_name].underlying_ticks.find_one({}, {"_id": 0})
    assert doc is not None
    assert doc["timestamp"] == EVENT_TIME
    assert isinstance(doc["processed_at"], datetime)
    assert (doc["product"], doc["price"], doc["tick_id"]) == ("NIFTY", 21503.45, 123)
    assert await mongo[db_name].underlying_ticks.distinct("product") == ["NIFTY"]
    assert app.metrics.messages[UNDERLYING, "processed"] == 1


async def test_indexes_readers_rely_on(start_app: StartApp, mongo: Mongo, db_name: str) -> None:
    await start_app()
    expected = {
        "underlying_ticks": [[("product", 1), ("timestamp", -1)], [("timestamp", -1)]],
        "option_quotes": [[("symbol", 1), ("timestamp", -1)], [("product", 1), ("timestamp", -1)]],
        "option_chains": [[("product", 1), ("expiry", 1), ("timestamp", -1)]],
    }
    for collection, wanted in expected.items():
        info = await mongo[db_name][collection].index_information()
        keys = [[(field, int(order)) for field, order in spec["key"]] for spec in info.values()]
        for index in wanted:
            assert index in keys, f"{collection} lacks {index}"


async def test_quote_outputs(start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str) -> None:
    await start_app()
    await publish(redis, UNDERLYING, sample("synthetic_underlying.json"))  # the spot the quote's model uses
    await stored(mongo, db_name, "underlying_ticks", 1)
    quote = sample("synthetic_option_quote.json")
    await publish(redis, OPTION_QUOTE, quote)
    await stored(mongo, db_name, "option_quotes", 1)

    assert await redis.get("latest:option:NIFTY20250123C21500") == quote  # as received, to the byte
    assert 290 < await redis.ttl("latest:option:NIFTY20250123C21500") <= 300

    doc = await mongo[db_name].option_quotes.find_one({}, {"_id": 0})
    assert doc is not None
    assert doc["timestamp"] == EVENT_TIME
    assert isinstance(doc["processed_at"], datetime)
    assert doc["symbol"] == "NIFTY20250123C21500"
    assert doc["iv"] == 0.2228  # the feed's own value, untouched
    model = doc["model"]
    assert (model["status"], model["price_used"], model["price"]) == ("ok", "mid", pytest.approx(173.70))
    # Black-76 on the spot (no chain yet), to 15:30 IST on the expiry day, ACT/365.
    years = datetime(2025, 1, 23, 10, 0, tzinfo=UTC) - datetime(2025, 1, 20, 10, 15, 30, 123456, tzinfo=UTC)
    expected = black_iv(173.70, 21503.45, 21500.0, 0.0, years.total_seconds() / (365 * 86400), "c")
    assert model["iv"] == pytest.approx(expected, rel=1e-9)

    surface = await surface_at(redis, "NIFTY", "2025-01-20T10:15:30.123456")
    assert surface["product"] == "NIFTY"
    smile = surface["expiries"][0]
    assert (smile["expiry"], smile["strikes"]) == ("2025-01-23", [21500.0])
    assert smile["ivs"] == [pytest.approx(expected, abs=1e-6)]
    assert smile["avg_iv"] == pytest.approx(expected, abs=1e-4)
    assert 0 < await redis.ttl("volatility_surface:NIFTY") <= 300
    members = await redis.zrange("iv_surface:NIFTY", 0, -1, withscores=True)
    assert [(orjson.loads(m)["strike"], m_score) for m, m_score in members] == [(21500.0, 21500.0)]  # type: ignore[str-unpack,arg-type]


async def test_chain_outputs(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str, redis_base_url: str
) -> None:
    await start_app()
    chain = orjson.loads(sample("synthetic_option_chain.json"))
    async with listening(redis_base_url, "enriched:option_chain") as heard:
        await publish(redis, OPTION_CHAIN, orjson.dumps(chain))
        await wait_for(lambda: len(heard.on("enriched:option_chain")) == 1, what="enriched chain")
        await stored(mongo, db_name, "option_chains", 1)

    calls = {row["strike"]: row for row in chain["calls"]}
    puts = {row["strike"]: row for row in chain["puts"]}
    call_oi = sum(row["open_interest"] for row in chain["calls"])
    put_oi = sum(row["open_interest"] for row in chain["puts"])
    expected = {
        "pcr_oi": round(put_oi / call_oi, 4),
        "pcr_volume": round(sum(r["volume"] for r in chain["puts"]) / sum(r["volume"] for r in chain["calls"]), 4),
        "atm_strike": 21500.0,
        "atm_straddle_price": round(calls[21500.0]["last"] + puts[21500.0]["last"], 2),
        "total_call_oi": call_oi,
        "total_put_oi": put_oi,
        "call_buildup_otm": sum(r["open_interest"] for r in chain["calls"] if r["strike"] > chain["spot_price"]),
        "put_buildup_otm": sum(r["open_interest"] for r in chain["puts"] if r["strike"] < chain["spot_price"]),
    }
    event = heard.on("enriched:option_chain")[0]
    cached = await get_json(redis, "latest:chain:NIFTY:2025-01-23")
    for enriched in (event, cached):
        for field, value in chain.items():
            if field in ("calls", "puts"):  # each row as received, plus enricher's `model` sub-object
                assert [{k: v for k, v in row.items() if k != "model"} for row in enriched[field]] == value
                assert all(row["model"]["status"] in ("ok", "below_intrinsic") for row in enriched[field])
            else:
                assert enriched[field] == value, f"input field {field} changed"
        assert enriched["model"]["forward_source"] == "parity"
        assert enriched["model"]["atm_iv"] is not None
        for field, value in expected.items():
            assert enriched[field] == pytest.approx(value, abs=1e-9), field
        assert enriched["max_pain_strike"] in chain["strikes"]
        assert isinstance(enriched["processed_at"], str)
        assert datetime.fromisoformat(enriched["processed_at"]).tzinfo is not None
    assert 290 < await redis.ttl("latest:chain:NIFTY:2025-01-23") <= 300

    pcr = await get_json(redis, "latest:pcr:NIFTY:2025-01-23")
    assert pcr == {
        "pcr_oi": expected["pcr_oi"],
        "pcr_volume": expected["pcr_volume"],
        "timestamp": chain["timestamp"],
    }
    assert 290 < await redis.ttl("latest:pcr:NIFTY:2025-01-23") <= 300
    assert [key async for key in redis.scan_iter("latest:pcr:NIFTY:*")] == [b"latest:pcr:NIFTY:2025-01-23"]

    doc = await mongo[db_name].option_chains.find_one({}, {"_id": 0})
    assert doc is not None
    assert isinstance(doc["processed_at"], datetime)  # the old service wrote a string here
    assert doc["timestamp"] == EVENT_TIME
    assert doc["pcr_oi"] == expected["pcr_oi"]
    assert len(doc["calls"]) == 21
    assert await mongo[db_name].option_chains.distinct("expiry", {"product": "NIFTY"}) == ["2025-01-23"]

    surface = await surface_at(redis, "NIFTY", chain["timestamp"])
    smile = surface["expiries"][0]
    forward = cached["model"]["forward"]
    model_iv = {  # the out-of-the-money side's model IV at each strike, else the other side's
        row["strike"]: row["model"]["iv"]
        for side in ("calls", "puts")
        for row in cached[side]
        if row["model"]["iv"] is not None and (row["strike"] < forward) == (side == "puts")
    }
    for side in ("calls", "puts"):
        for row in cached[side]:
            if row["model"]["iv"] is not None:
                model_iv.setdefault(row["strike"], row["model"]["iv"])
    assert smile["strikes"] == sorted(model_iv)
    assert smile["ivs"] == [pytest.approx(model_iv[k], abs=1e-6) for k in smile["strikes"]]
    assert smile["atm_iv"] == cached["model"]["atm_iv"]
    assert await redis.zcard("iv_surface:NIFTY") == len(model_iv)


async def test_iv_surface_stays_bounded(start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str) -> None:
    await start_app(iv_surface_max=30)
    chain = orjson.loads(sample("synthetic_option_chain.json"))
    for second in range(5):
        stamp = f"2025-01-20T10:15:3{second}.000000"
        await publish(redis, OPTION_CHAIN, orjson.dumps({**chain, "timestamp": stamp}))
    await stored(mongo, db_name, "option_chains", 5)
    smile = (await surface_at(redis, "NIFTY", "2025-01-20T10:15:34.000000"))["expiries"][0]
    # The old service only ever added members; five chains of 21 strikes made up to 105.
    members = {orjson.loads(m)["strike"]: orjson.loads(m)["iv"] for m in await redis.zrange("iv_surface:NIFTY", 0, -1)}  # type: ignore[arg-type]
    assert 0 < len(members) <= 21
    assert members == dict(zip(smile["strikes"], smile["ivs"], strict=True))  # exactly the current surface


async def test_duplicate_delivery_processed_once(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str, redis_base_url: str
) -> None:
    app = await start_app()
    tick, quote, chain = (
        sample("synthetic_underlying.json"),
        sample("synthetic_option_quote.json"),
        sample("synthetic_option_chain.json"),
    )
    async with listening(redis_base_url, "enriched:underlying", "enriched:option_chain") as heard:
        for _ in range(3):
            await publish(redis, UNDERLYING, tick)
            await publish(redis, OPTION_QUOTE, quote)
            await publish(redis, OPTION_CHAIN, chain)
        await wait_for(lambda: app.metrics.total("duplicate") == 6, what="6 duplicates")
        for collection in ("underlying_ticks", "option_quotes", "option_chains"):
            await stored(mongo, db_name, collection, 1)
        assert app.store is not None
        await asyncio.wait_for(app.store.wait_idle(), 10)  # nothing buffered, nothing in flight
    for collection in ("underlying_ticks", "option_quotes", "option_chains"):
        assert await mongo[db_name][collection].count_documents({}) == 1, collection
    assert len(heard.on("enriched:underlying")) == 1
    assert len(heard.on("enriched:option_chain")) == 1


async def test_feed_restart_loses_nothing(start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str) -> None:
    """tick_id restarts at 0 with the feed; the old tick_id-only key dropped the next hour."""
    await start_app()
    before = [
        with_fields(sample("synthetic_underlying.json"), tick_id=i, timestamp=f"2025-01-20T10:00:0{i}")
        for i in range(5)
    ]
    after = [
        with_fields(sample("synthetic_underlying.json"), tick_id=i, timestamp=f"2025-01-20T10:30:0{i}")
        for i in range(5)
    ]
    await publish(redis, UNDERLYING, *before)
    await stored(mongo, db_name, "underlying_ticks", 5)
    await publish(redis, UNDERLYING, *after)
    await stored(mongo, db_name, "underlying_ticks", 10)
    ids = sorted([doc["tick_id"] async for doc in mongo[db_name].underlying_ticks.find({}, {"tick_id": 1})])
    assert ids == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


async def test_real_data_provider_shape(start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str) -> None:
    await start_app()
    await publish(redis, UNDERLYING, sample("gdf_underlying.json"))
    await publish(redis, OPTION_CHAIN, sample("gdf_option_chain.json"))
    await stored(mongo, db_name, "option_chains", 1)
    await stored(mongo, db_name, "underlying_ticks", 1)
    # The provider's `expiry` holds a trade time; the real one comes from the instrument names.
    chain = await get_json(redis, "latest:chain:NIFTY:2025-01-23")
    assert chain["source_expiry"] == "2025-01-20T10:15:30.123456"
    assert chain["calls"][0]["instrument"] == "NIFTY_23JAN2025_21000_CE"
    assert chain["calls"][0]["open_interest"] == chain["calls"][0]["oi"]
    assert chain["total_call_oi"] == sum(row["oi"] for row in chain["calls"])
    tick = await mongo[db_name].underlying_ticks.find_one({}, {"_id": 0})
    assert tick is not None
    assert tick["volume"] == 1250


async def test_bad_input_is_dead_lettered_and_good_input_flows(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str
) -> None:
    app = await start_app()
    good = sample("synthetic_underlying.json")
    await publish(redis, UNDERLYING, b"\xff\xfe not utf-8", good, b"[1, 2]", with_fields(good, price=-1))
    await stored(mongo, db_name, "underlying_ticks", 1)
    await wait_for(lambda: app.metrics.total("invalid") == 3, what="3 invalid")

    async def three_dead_letters() -> bool:
        return await redis.llen("dlq:enrichment") == 3

    await wait_for(three_dead_letters, what="3 dead letters")
    records = [orjson.loads(raw) for raw in await redis.lrange("dlq:enrichment", 0, -1)]
    assert [r["error_type"] for r in records] == ["negative", "not_object", "not_utf8"]  # newest first
    assert all(r["channel"] == UNDERLYING and r["attempts"] == 1 for r in records)
    assert "payload_b64" in records[2]  # not UTF-8: kept byte for byte


async def test_an_older_message_never_overwrites_a_newer_latest_value(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str
) -> None:
    await start_app()
    tick = sample("synthetic_underlying.json")
    newer = with_fields(tick, price=22000.0, tick_id=2, timestamp="2025-01-20T10:15:31")
    older = with_fields(tick, price=21000.0, tick_id=1, timestamp="2025-01-20T10:15:29")
    await publish(redis, UNDERLYING, newer)
    await stored(mongo, db_name, "underlying_ticks", 1)
    await publish(redis, UNDERLYING, older)
    await stored(mongo, db_name, "underlying_ticks", 2)  # stored: it is history, just not the latest
    assert await get_json(redis, "latest:underlying:NIFTY") == {"price": 22000.0, "timestamp": "2025-01-20T10:15:31"}
    candle = await get_json(redis, "ohlc:NIFTY:1m")
    assert (candle["open"], candle["close"], candle["num_ticks"]) == (21000.0, 22000.0, 2)


async def test_a_gap_in_the_tick_counter_is_counted(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str
) -> None:
    app = await start_app()
    tick = sample("synthetic_underlying.json")
    ids = [*range(10), *range(25, 30)]
    stamps = [f"2025-01-20T10:15:{second:02d}" for second in range(len(ids))]  # no silence, only the id jump
    await publish(
        redis, UNDERLYING, *(with_fields(tick, tick_id=i, timestamp=t) for i, t in zip(ids, stamps, strict=True))
    )
    await stored(mongo, db_name, "underlying_ticks", len(ids))
    assert app.metrics.events["feed_gaps"] == 1
    assert app.metrics.events["feed_gap_ticks"] == 15


async def test_a_document_bson_cannot_hold_is_dead_lettered_and_the_rest_stored(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str
) -> None:
    """An integer past int64 parses as a number but can't be encoded: it once killed the writer."""
    app = await start_app()
    tick = sample("synthetic_underlying.json")
    huge = with_fields(tick, tick_id=1, volume=2**64 - 1, timestamp="2025-01-20T10:15:31")
    fine = [with_fields(tick, tick_id=i, timestamp=f"2025-01-20T10:15:3{i}") for i in (2, 3)]
    await publish(redis, UNDERLYING, fine[0], huge, fine[1])
    await stored(mongo, db_name, "underlying_ticks", 2)

    async def dead_lettered() -> bool:
        return await redis.llen("dlq:enrichment") == 1

    await wait_for(dead_lettered, what="the unstorable tick dead-lettered")
    record = orjson.loads(await redis.lindex("dlq:enrichment", 0) or b"{}")
    assert record["error_type"] == "mongo_write_error"
    assert record["payload"] == huge.decode()
    await publish(redis, UNDERLYING, with_fields(tick, tick_id=4, timestamp="2025-01-20T10:15:39"))
    await stored(mongo, db_name, "underlying_ticks", 3)  # the writer is still alive
    assert app.store is not None


async def test_a_quiet_subscription_is_pinged_not_dropped(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str
) -> None:
    app = await start_app()
    app.source._health = 0.2  # type: ignore[attr-defined]  # ping after 0.2 s of silence
    await publish(redis, UNDERLYING, sample("synthetic_underlying.json"))
    await stored(mongo, db_name, "underlying_ticks", 1)
    pings_before = await _pings(redis)

    async def three_more_pings() -> bool:
        return await _pings(redis) >= pings_before + 3

    await wait_for(three_more_pings, timeout=10, what="three quiet intervals, each answered by a PING")
    assert app.metrics.events["redis_reconnects"] == 0
    await publish(redis, UNDERLYING, with_fields(sample("synthetic_underlying.json"), tick_id=124))
    await stored(mongo, db_name, "underlying_ticks", 2)


async def _pings(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def test_quote_cache_holds_the_bytes_received_or_a_gdf_row_with_its_canonical_names(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str
) -> None:
    await start_app()
    spaced = orjson.dumps(orjson.loads(sample("synthetic_option_quote.json")), option=orjson.OPT_INDENT_2)
    gdf_row = orjson.loads(sample("gdf_option_chain.json"))["puts"][10]
    await publish(redis, OPTION_QUOTE, spaced)
    await publish(redis, OPTION_QUOTE, orjson.dumps(gdf_row))
    await stored(mongo, db_name, "option_quotes", 2)

    assert await redis.get("latest:option:NIFTY20250123C21500") == spaced  # its own layout, not re-encoded
    cached = await get_json(redis, "latest:option:NIFTY20250123P21500")
    assert {key: cached[key] for key in gdf_row} == gdf_row  # every field the provider sent
    assert (cached["symbol"], cached["strike"], cached["option_type"]) == ("NIFTY20250123P21500", 21500.0, "PUT")
