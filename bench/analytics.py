"""Implied vols per second of enricher's Black-76 kernel, against vollib's scalar solver.

    .venv/bin/python -m bench.analytics                 # 100,000 options, vollib on 2,000, ~2 s
    .venv/bin/python -m bench.analytics --options 1000000 --repeats 3

The batch is the unit tests' domain, drawn at random: ln(F/K) uniform in [-1, 1], T
log-uniform from 1 day to 2 years, vol log-uniform from 5% to 200%, calls and puts, r 0 or
5%, priced by `black76_price`. Options whose price underflows to 0 or sits within rounding
of intrinsic value are kept: a real batch has them too, and they get a status.

One core: numpy's elementwise functions never use threads, and CPU time is printed next
to wall time to show it (a ratio near 1). Figures are the best of --repeats runs, as the
machine is shared. vollib's `implied_volatility` is timed on --vollib options of the same
batch and scaled; its errors on the sample are compared to ours, over all options both
solve, and over the well-posed ones (vega·σ/price > 1e-4, price > 1e-250), where an IV is
determined to better than ~1e-12 by its price.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from vollib.black.implied_volatility import implied_volatility as vollib_iv

from bench.model import TARGET_INLINE_US, inline_us
from enricher.analytics.black76 import OK, ImpliedVol, black76_greeks, black76_price, implied_vol

F = 100.0
TARGET_RATE = 2_000_000
TARGET_RATIO = 80.0


def make_batch(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.exp(rng.uniform(math.log(1 / 365), math.log(2.0), n))
    vol = np.exp(rng.uniform(math.log(0.05), math.log(2.0), n))
    k = F * np.exp(-rng.uniform(-1.0, 1.0, n))
    call = rng.random(n) < 0.5
    r = np.where(rng.random(n) < 0.5, 0.0, 0.05)
    price = black76_price(F, k, t, vol, call, r=r)
    return {"k": k, "t": t, "vol": vol, "call": call, "r": r, "price": price}


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, float]:
    """(wall, cpu) seconds of the fastest of `repeats` runs."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def time_vollib(batch: dict[str, np.ndarray], at: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds per option of vollib's scalar solver over `at`, and its IVs (NaN where it raised)."""
    out = np.full(at.size, np.nan)
    args = [
        (batch["price"][i], F, batch["k"][i], batch["r"][i], batch["t"][i], "c" if batch["call"][i] else "p")
        for i in at
    ]
    start = time.perf_counter()
    for j, row in enumerate(args):
        try:
            out[j] = vollib_iv(*row)
        except Exception:
            continue
    return (time.perf_counter() - start) / at.size, out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.analytics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--options", type=int, default=100_000)
    parser.add_argument("--vollib", type=int, default=2_000, help="options timed through vollib")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chain-runs", type=int, default=1000, help="runs of the one-chain figures")
    args = parser.parse_args(argv)

    batch = make_batch(args.options, args.seed)
    n = args.options

    def solve() -> ImpliedVol:
        return implied_vol(F, batch["k"], batch["t"], batch["price"], batch["call"], r=batch["r"])

    iv, status = solve()
    wall, cpu = best_of(args.repeats, solve)
    rate = n / wall
    counts = np.bincount(status.ravel(), minlength=6)

    rng = np.random.default_rng(args.seed + 1)
    sample = rng.choice(n, size=min(args.vollib, n), replace=False)
    vollib_seconds, theirs = time_vollib(batch, sample)
    vollib_rate = 1.0 / vollib_seconds
    ratio = rate / vollib_rate

    ours = iv[sample]
    both = np.isfinite(theirs) & (status[sample] == OK)
    greeks = black76_greeks(
        F,
        batch["k"][sample],
        batch["t"][sample],
        batch["vol"][sample],
        batch["call"][sample],
        r=batch["r"][sample],
    )
    price = batch["price"][sample]
    with np.errstate(divide="ignore", invalid="ignore"):
        elasticity = 100.0 * greeks.vega * batch["vol"][sample] / price
        error = np.where(theirs > 0.0, np.abs(ours / theirs - 1.0), np.abs(ours))  # vollib's 0 at intrinsic
    posed = both & (elasticity > 1e-4) & (price > 1e-250)
    truth = np.abs(ours / batch["vol"][sample] - 1.0)

    price_wall, _ = best_of(
        args.repeats,
        lambda: black76_price(F, batch["k"], batch["t"], batch["vol"], batch["call"], r=batch["r"]),
    )
    greeks_wall, _ = best_of(
        args.repeats,
        lambda: black76_greeks(F, batch["k"], batch["t"], batch["vol"], batch["call"], r=batch["r"]),
    )

    statuses = "/".join(str(c) for c in counts)
    print(f"batch: {n:,} options, statuses OK/below/above/expired/bad/no-conv = {statuses}")
    per_option = f"{wall / n * 1e9:.0f} ns/option, cpu/wall {cpu / wall:.2f}"
    print(f"implied_vol:  {wall * 1e3:8.1f} ms  {rate:13,.0f} IV/s  ({per_option})")
    scalar = f"scalar, {sample.size:,} options"
    print(f"vollib:       {vollib_seconds * 1e6:8.1f} us  {vollib_rate:13,.0f} IV/s  ({scalar})")
    print(f"ratio:        {ratio:8.1f}x")
    print(f"max |iv/vollib - 1|: {np.max(error[both]):.2e} over {both.sum():,} solved by both; "
          f"{np.max(error[posed]):.2e} over {posed.sum():,} well-posed")  # fmt: skip
    print(f"max |iv/true vol - 1| over the well-posed: {np.max(truth[posed]):.2e}")
    print(f"black76_price:  {price_wall * 1e3:6.1f} ms  {n / price_wall:13,.0f} options/s")
    print(f"black76_greeks: {greeks_wall * 1e3:6.1f} ms  {n / greeks_wall:13,.0f} options/s")
    verdict = "met" if rate >= TARGET_RATE and ratio >= TARGET_RATIO else "MISSED"
    print(f"targets (>= {TARGET_RATE:,} IV/s, >= {TARGET_RATIO:.0f}x vollib): {verdict}")
    # The whole model of one chain, as the daemon runs it inline (bench/model.py has the breakdown).
    chain_us = {strikes: inline_us(strikes, args.chain_runs) for strikes in (21, 200)}
    print(
        f"full analytics of one chain inline, surface update included (median of {args.chain_runs}): "
        f"21 strikes {chain_us[21]:.0f} us, 200 strikes {chain_us[200]:.0f} us"
    )
    inline_verdict = "met" if chain_us[21] <= TARGET_INLINE_US else "MISSED"
    print(f"target (<= {TARGET_INLINE_US:.0f} us for 21 strikes): {inline_verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
