"""Time to model chains (price used, forward, IV, greeks, smile, skew, OI, GEX) and quotes.

    .venv/bin/python -m bench.model                  # ~10 s
    .venv/bin/python -m bench.model --runs 2000 --batches 30

Chains come from the synthetic feed, parsed as the daemon parses them, and each is
modelled against the previous snapshot of its (product, expiry), as in steady state.
Figures are medians over --runs (inline) or --batches (batched) runs, since the machine
is shared. The inline figure is the chain's full analytics: `model_chain` and the
surface update (`SurfaceBook.apply_model`). "kernel" is the two black76 calls alone on
the same options (implied_vol, then greeks): what the model cannot go below. "pickle" is
one pool round trip's serialisation (items there, results back), which the pool adds to
the batched figure.

Targets (from the issue): <= 300 us for one 21-strike chain inline, surface update
included; >= 500 chains/s for batches of 64 chains of 200 strikes.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np

from enricher.analytics.black76 import black76_greeks, implied_vol
from enricher.analytics.model import ChainSnapshot, ModelConfig, for_pool, model_chain, model_chains, model_quotes
from enricher.analytics.surface import SurfaceBook
from enricher.feed.synthetic import SyntheticFeed
from enricher.messages import parse
from enricher.records import Chain, Quote

TARGET_INLINE_US = 300.0
TARGET_CHAINS_PER_S = 500.0
START = datetime(2025, 1, 20, 4, 0, tzinfo=UTC)


def median_seconds(runs: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def round_trip(obj: object) -> object:
    return pickle.loads(pickle.dumps(obj))


def make_chains(feed: SyntheticFeed, count: int, strikes: int) -> list[Chain]:
    """`count` chains round-robin over the feed's products, spot walking between them."""
    chains = []
    for i in range(count):
        product = feed.products[i % len(feed.products)]
        feed.tick(product)
        [(channel, payload)] = feed.chain(product, strikes=strikes)
        chain = parse(channel, payload, feed_tz=UTC)
        assert isinstance(chain, Chain)
        chains.append(chain)
    return chains


def kernel_seconds(chain: Chain, runs: int) -> tuple[float, float]:
    """(implied_vol alone, implied_vol and greeks) on one chain's 2n options, at spot and the
    feed's own prices."""
    strikes = np.concatenate([chain.strikes, chain.strikes])
    price = np.concatenate([chain.call_last, chain.put_last])
    is_call = np.arange(strikes.size) < chain.strikes.size
    years = 3.0 / 365.0
    iv = implied_vol(chain.spot_price, strikes, years, price, is_call).iv
    solver = median_seconds(runs, lambda: implied_vol(chain.spot_price, strikes, years, price, is_call))
    kernel = median_seconds(
        runs,
        lambda: (
            implied_vol(chain.spot_price, strikes, years, price, is_call),
            black76_greeks(chain.spot_price, strikes, years, iv, is_call),
        ),
    )
    return solver, kernel


def analytics(chain: Chain, config: ModelConfig, previous: ChainSnapshot, surfaces: SurfaceBook) -> None:
    """What the daemon does for a chain inline: its model, then its expiry's smile on the surface."""
    model, _ = model_chain(chain, config, previous)
    surfaces.apply_model(chain, model, chain.doc["timestamp"])


def chain_pair(feed: SyntheticFeed, config: ModelConfig, strikes: int) -> tuple[Chain, ChainSnapshot]:
    """A chain and the snapshot of the one before it, of the same product and expiry."""
    [before] = make_chains(feed, 1, strikes)
    chain = parse(*feed.chain(before.product, before.expiry, strikes=strikes)[0], feed_tz=UTC)
    assert isinstance(chain, Chain)
    return chain, model_chain(before, config, None)[1]


def inline_us(strikes: int, runs: int, seed: int = 1) -> float:
    """Median microseconds of one chain's full analytics inline, its surface update included."""
    config = ModelConfig()
    feed = SyntheticFeed(seed=seed, start=START, step=timedelta(milliseconds=50))
    chain, previous = chain_pair(feed, config, strikes)
    return median_seconds(runs, partial(analytics, chain, config, previous, SurfaceBook())) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000, help="inline runs per figure")
    parser.add_argument("--batches", type=int, default=15, help="runs of the batched figure")
    parser.add_argument("--batch", type=int, default=64, help="chains per batch")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    config = ModelConfig()
    feed = SyntheticFeed(seed=args.seed, start=START, step=timedelta(milliseconds=50))

    print(f"inline, one chain against its previous snapshot, with its surface update (median of {args.runs}):")
    inline: dict[int, float] = {}
    for strikes in (21, 200):
        chain, previous = chain_pair(feed, config, strikes)
        run = partial(analytics, chain, config, previous, SurfaceBook())
        inline[strikes] = median_seconds(args.runs, run) * 1e6
        model = median_seconds(args.runs, partial(model_chain, chain, config, previous)) * 1e6
        solver, kernel = (seconds * 1e6 for seconds in kernel_seconds(chain, args.runs))
        print(
            f"  {strikes:3d} strikes: {inline[strikes]:8.0f} us   (model_chain alone {model:4.0f} us; "
            f"black76 kernel alone: {kernel:4.0f} us, of which implied_vol {solver:4.0f} us)"
        )

    chains = make_chains(feed, args.batch, 200)
    items: list[tuple[Chain, ChainSnapshot | None]] = [(c, None) for c in chains]
    results = model_chains(items, config)
    batch_s = median_seconds(args.batches, lambda: model_chains(items, config))
    rate = args.batch / batch_s
    pooled = [(for_pool(c), None) for c in chains]
    pack_s = median_seconds(args.batches, lambda: [for_pool(c) for c in chains])
    pickle_s, raw_s, results_s = (
        median_seconds(args.batches, partial(round_trip, obj)) for obj in (pooled, items, results)
    )
    print(f"batched, {args.batch} x 200-strike chains via model_chains (median of {args.batches}):")
    print(f"  {batch_s * 1e3:8.1f} ms per batch   {rate:8.0f} chains/s   ({batch_s / args.batch * 1e6:.0f} us/chain)")
    print(
        f"  pickle round trips per batch: items {pickle_s * 1e3:.1f} ms via for_pool ({pack_s * 1e3:.1f} ms to make), "
        f"{raw_s * 1e3:.1f} ms as parsed (with doc); results {results_s * 1e3:.1f} ms"
    )
    read_s = median_seconds(args.batches, lambda: [(m.to_json(), m.call_models(), m.put_models()) for m, _ in results])
    print(f"  reading the results (to_json + call/put models): {read_s / args.batch * 1e6:.0f} us/chain")
    small = make_chains(feed, args.batch, 21)
    small_s = median_seconds(args.batches, lambda: model_chains([(c, None) for c in small], config))
    print(f"  {args.batch} x 21-strike chains: {small_s / args.batch * 1e6:.0f} us/chain")

    quotes = []
    for product in feed.products:
        for channel, payload in feed.quotes(product, 3):
            quote = parse(channel, payload, feed_tz=UTC)
            assert isinstance(quote, Quote)
            quotes.append(quote)
    forwards: list[float | None] = [feed.spot(q.product) for q in quotes]
    quotes_s = median_seconds(args.runs // 4 or 1, lambda: model_quotes(quotes, forwards, config))
    per_quote = quotes_s / len(quotes) * 1e6
    print(f"quotes: {len(quotes)} per model_quotes call: {quotes_s * 1e6:.0f} us ({per_quote:.1f} us/quote)")

    inline_ok = inline[21] <= TARGET_INLINE_US
    batch_ok = rate >= TARGET_CHAINS_PER_S
    verdict = "met" if inline_ok else "MISSED"
    print(f"target inline 21-strike <= {TARGET_INLINE_US:.0f} us, surface update included: {verdict}")
    print(f"target >= {TARGET_CHAINS_PER_S:.0f} chains/s of 200 strikes: {'met' if batch_ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
