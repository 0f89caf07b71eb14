"""Jäckel's normalised Black function, and Householder steps to invert it, vectorised.

Everything here works on out-of-the-money options in Jäckel's normalisation: with
x = ln(F/K) <= 0 and s = σ√T, the undiscounted OTM price divided by √(FK) is

    b(x, s) = e^{x/2}·Φ(x/s + s/2) - e^{-x/2}·Φ(x/s - s/2),   0 < b < b_max = e^{x/2}.

(A put at x equals a call at -x, so every option maps to this by parity.)

b is evaluated without cancellation, by the first of these forms that applies. With h = x/s,
t = s/2, p = -(h+t)/√2, q = (t-h)/√2 and E = e^{-(h²+t²)/2}:
  - p > 4 (far below b's inflection point), unless t < 0.01 and |h| <= 10:
    b = E/2·(erfcx(p) - erfcx(q)), the difference's leading term √2·t/(√π·p·q) taken
    exactly (see `erfcx_large_correction`), so it loses only ~ε/(p·t);
  - t < 0.21, |h| <= 10: Jäckel's expansion of b/E to 12th order in t, exact to ~ε·h²,
    where the forms below would lose ~ε·|h|/t to cancellation;
  - q <= 0.469, near the money: b = (b_max·erf(-p) + erf(q)/b_max)/2 - sinh(-x/2), terms of
    the order of b;
  - otherwise Jäckel's rewriting with Cody's erfcx: b = E/2·(erfcx(p) - erfcx(q)) below the
    inflection point (p >= 0), and above it b_max - b = E/2·(erfcx(-p) + erfcx(q)), a sum.
That keeps b within ~1e-15 of LetsBeRational's (3e-14 at worst), except deep out of the
money (|h| > 10, prices below e^-50·b_max) at s < 2e-4, where it degrades to ~5e-8 at s = 1e-9.

The steps are Jäckel's third-order Householder steps on his three objectives (P. Jäckel,
"Let's Be Rational", Wilmott (2015) 40-53, section 5), with a bracket that falls back to
bisection when a step would leave it.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from enricher.analytics.lean import constants, every, filled, frozen, indices, pick
from enricher.analytics.normal import FloatArray, erf_small, erfcx_large_correction, erfcx_moderate, erfcx_nonnegative

BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]

_SQRT1_2: Final = 0.70710678118654752440084436210484903928483593768847
_INV_SQRT_2PI: Final = 0.39894228040143267793994605993438186847585863116493
_SQRT2: Final = 1.41421356237309504880168872420969807856967187537694
_INV_SQRT_PI: Final = 0.56418958354775628694807945156077258584405062932900
_LARGE: Final = 4.0  # Cody's asymptotic range of erfcx
_SQRT_PI_2: Final = 1.25331413731550025120788264240552262650349337030497
_ERF_SMALL_LIMIT: Final = 0.46875
# Jäckel's small-t expansion is exact to ε for t < 2·ε^(1/16); its coefficients cancel like
# h², so past |h| = 10 the erfcx difference (error ~ε·|h|/t, on prices below e^-50) is better.
_SMALL_T: Final = 2.0 * float(np.finfo(np.float64).eps) ** 0.0625
_SMALL_T_MAX_H: Final = 10.0
_DEEP_MIN_T: Final = 0.01
_TINY: Final = float(np.finfo(np.float64).tiny)
_PINNED: Final = 4.0 * float(np.finfo(np.float64).eps)

# Jäckel's objectives g(s), each nearly linear in s on its own branch of b.
LOW: Final = 0  # 1/ln b - 1/ln β, where b vanishes like e^{-x²/2s²}
MIDDLE: Final = 1  # b - β
HIGH: Final = 2  # ln((b_max - β)/(b_max - b)), where b saturates

# What the hot paths compute with, as 0-d arrays (see `lean.constants`).
_ZERO, _QUARTER, _HALF, _MINUS_HALF, _ONE, _TWO, _THREE, _SIX = constants(0.0, 0.25, 0.5, -0.5, 1.0, 2.0, 3.0, 6.0)
_MINUS_SQRT1_2, _SQRT_PI_2_ARRAY, _TWO_INV_SQRT_2PI = constants(-_SQRT1_2, _SQRT_PI_2, 2.0 * _INV_SQRT_2PI)
_LARGE_P, _DEEP_MIN_T_ARRAY, _SMALL_T_ARRAY, _MIN_SMALL_T_H = constants(_LARGE, _DEEP_MIN_T, _SMALL_T, -_SMALL_T_MAX_H)

FULL_BATCH_STEPS: Final = 1  # from the corrected guess, one step is enough for most options
MAX_STEPS: Final = 12
STEP_TOLERANCE: Final = 3e-4  # a Householder step this small leaves an error of ~0.25·its 4th power
_STEP_TOLERANCE, _PINNED_ARRAY = constants(STEP_TOLERANCE, _PINNED)


class OtmPrice(NamedTuple):
    b: FloatArray
    b_max_minus_b: FloatArray  # without the cancellation of b_max - b near the top
    vega: FloatArray  # db/ds


def otm_price(x: FloatArray, s: FloatArray, b_max: FloatArray, sinh_half: FloatArray) -> OtmPrice:
    """b(x, s) for x <= 0, s > 0; `b_max` = e^{x/2} and `sinh_half` = sinh(-x/2) precomputed.

    Callers hold np.errstate(all="ignore"), as every step of the solver does: under- and
    overflow are expected here, and select the form to use.
    """
    h = x / s
    t = _HALF * s
    p = (h + t) * _MINUS_SQRT1_2
    half_e = _HALF * np.exp(_MINUS_HALF * (h * h + t * t))
    # Cheapest accurate form first; below t = 0.01 the small-t expansion beats ε/(p·t).
    deep = (p > _LARGE_P) & ((t >= _DEEP_MIN_T_ARRAY) | (h < _MIN_SMALL_T_H))  # then q > p > 4 too
    small_t = ~deep & (t < _SMALL_T_ARRAY) & (h >= _MIN_SMALL_T_H)
    if every(small_t):  # the usual batch: s < 0.42, none far out of the money; nothing to split
        vega = _TWO_INV_SQRT_2PI * half_e
        b = vega * _small_t_expansion(h, t)
        return OtmPrice(b, b_max - b, vega)
    q = (t - h) * _SQRT1_2
    b = np.empty_like(s)
    gap = np.empty_like(s)
    near = (q <= _ERF_SMALL_LIMIT) & ~small_t & ~deep
    at = np.flatnonzero(deep)
    if at.size:
        pa, qa = p[at], q[at]
        leading = (_SQRT2 * _INV_SQRT_PI) * t[at] / (pa * qa)
        b[at] = half_e[at] * (leading - erfcx_large_correction(pa) + erfcx_large_correction(qa))
        gap[at] = b_max[at] - b[at]
    at = np.flatnonzero(~(near | small_t | deep))
    if at.size:
        pa, e = p[at], half_e[at]
        ep = erfcx_nonnegative(np.abs(pa))
        eq = erfcx_nonnegative(q[at])
        below = pa >= 0.0
        top_gap = e * (ep + eq)
        b[at] = np.where(below, e * (ep - eq), b_max[at] - top_gap)
        gap[at] = np.where(below, b_max[at] - b[at], top_gap)
    at = np.flatnonzero(near)
    if at.size:
        pa, bm = p[at], b_max[at]  # |p| <= q: both in erf_small's range
        b[at] = 0.5 * (bm * erf_small(-pa) + erf_small(q[at]) / bm) - sinh_half[at]
        gap[at] = bm - b[at]
    at = np.flatnonzero(small_t)
    if at.size:
        b[at] = (2.0 * _INV_SQRT_2PI) * half_e[at] * _small_t_expansion(h[at], t[at])
        gap[at] = b_max[at] - b[at]
    return OtmPrice(b, gap, (2.0 * _INV_SQRT_2PI) * half_e)


# Jäckel's small-t expansion: Y(h+t) - Y(h-t) = 2t·(a + c1·t² + c2·t⁴ + ... + c6·t¹²), each
# c_k nested in h² as (p + q·a) + h²·(...) around a·h², over a divisor. Rows c1 .. c6: their
# (p, q) pairs from the innermost level out, and the divisor.
_SMALL_T_ROWS: Final = (
    (((-1.0, 3.0),), 6.0),
    (((-1.0, 10.0), (-7.0, 15.0)), 120.0),
    (((-1.0, 21.0), (-18.0, 105.0), (-57.0, 105.0)), 5040.0),
    (((-1.0, 36.0), (-33.0, 378.0), (-285.0, 1260.0), (-561.0, 945.0)), 362880.0),
    (((-1.0, 55.0), (-52.0, 990.0), (-840.0, 6930.0), (-4680.0, 17325.0), (-6555.0, 10395.0)), 39916800.0),
    (
        (
            (-1.0, 78.0),
            (-75.0, 2145.0),
            (-1926.0, 25740.0),
            (-20370.0, 135135.0),
            (-82845.0, 270270.0),
            (-89055.0, 135135.0),
        ),
        6227020800.0,
    ),
)


class _Nesting(NamedTuple):
    """Jäckel's six coefficient rows, laid out to nest together in one (6, n) array.

    Row i (0 to 5) has i + 1 levels. Each row starts as late as its depth allows, so all end
    together: round r (0 to 5) nests rows 5 - r to 5, row i at its level i + r - 5 (0 is
    the innermost)."""

    p: FloatArray  # p of each (round, row) in the order the rounds take them, as a column
    q: FloatArray
    divisors: FloatArray  # of rows 1 to 6, as a column
    rounds: tuple[tuple[int, slice], ...]  # each round's first row, and its slice of p and q


def _nesting() -> _Nesting:
    depth = len(_SMALL_T_ROWS)
    p: list[float] = []
    q: list[float] = []
    rounds = []
    for round_ in range(depth):
        first = depth - 1 - round_
        rounds.append((first, slice(len(p), len(p) + round_ + 1)))
        for row in range(first, depth):
            levels, _ = _SMALL_T_ROWS[row]
            p_level, q_level = levels[row - first]
            p.append(p_level)
            q.append(q_level)
    divisors = [divisor for _, divisor in _SMALL_T_ROWS]
    p_column, q_column, divisor_column = (frozen(np.array(v).reshape(-1, 1)) for v in (p, q, divisors))
    return _Nesting(p_column, q_column, divisor_column, tuple(rounds))


_NESTING: Final = _nesting()


def _small_t_expansion(h: FloatArray, t: FloatArray) -> FloatArray:
    """Y(h+t) - Y(h-t) with Y = Φ/φ, to 12th order in t: Jäckel's small_t_expansion_of_normalized_black.

    His nesting of each coefficient, operation for operation, so the same bits: each level
    is (p + q·a) + h²·(inner), around a·h² = h²·a at the innermost. The six rows nest
    together in one array (`_Nesting`) and every (p + q·a) is one call: 17 numpy calls for
    the coefficients where row by row took 84, ~13 µs less on a 21-strike chain's options.
    """
    a = _ONE + h * _SQRT_PI_2_ARRAY * erfcx_moderate(h * _MINUS_SQRT1_2)  # -h/√2 is 0 to 7.1 here
    h2 = h * h
    level = _NESTING.p + _NESTING.q * a
    nested = np.empty((len(_SMALL_T_ROWS), *a.shape))
    nested[...] = a
    for first, at in _NESTING.rounds:
        inner = nested[first:]
        inner *= h2
        inner += level[at]
    c1, *higher = nested / _NESTING.divisors
    w = t * t
    series: FloatArray = higher.pop()
    while higher:
        series = higher.pop() + w * series
    expansion: FloatArray = _TWO * t * (a + w * (c1 + w * series))
    return expansion


class Problem(NamedTuple):
    """What the steps solve for: b(x, s) = beta, with e^{x/2} and sinh(-x/2) precomputed."""

    beta: FloatArray
    x: FloatArray
    b_max: FloatArray
    sinh_half: FloatArray

    @classmethod
    def of(cls, beta: FloatArray, x: FloatArray) -> Problem:
        return cls(beta, x, np.exp(_HALF * x), np.sinh(_MINUS_HALF * x))

    def subset(self, at: npt.NDArray[np.intp]) -> Problem:
        return Problem(self.beta[at], self.x[at], self.b_max[at], self.sinh_half[at])


class Bracket(NamedTuple):
    s: FloatArray
    s_left: FloatArray  # the root lies in [s_left, s_right]; steps narrow it
    s_right: FloatArray


def bracket(s: FloatArray, s_left: FloatArray | float, s_right: FloatArray | float) -> Bracket:
    """A start `s` in its bracket; a guess outside it (or NaN, or 0) is replaced by the midpoint."""
    left = filled(s.shape, s_left)
    right = filled(s.shape, s_right)
    inside = (s >= left) & (s <= right) & (s > _ZERO)  # a root on a node is a guess on its end
    return Bracket(s if every(inside) else np.where(inside, s, _midpoint(left, right)), left, right)


def _midpoint(s_left: FloatArray, s_right: FloatArray) -> FloatArray:
    return np.where(np.isinf(s_right), 2.0 * s_left, 0.5 * (s_left + s_right))


class _Step(NamedTuple):
    at: Bracket
    converged: BoolArray


class _Derivatives(NamedTuple):
    """One objective g at s, as a Householder step needs it: -g/g', g''/g' and g'''/g'."""

    newton: FloatArray
    halley: FloatArray
    hh3: FloatArray
    unusable: BoolArray  # where b under- or overflowed for this objective: bisect instead


class _AtS(NamedTuple):
    """b at s, and b''/b' and b'''/b', from which every objective's derivatives follow."""

    price: OtmPrice
    beta: FloatArray
    b_max: FloatArray
    halley: FloatArray
    hh3: FloatArray


def _low(at: _AtS) -> _Derivatives:
    """g = 1/ln b - 1/ln β: nearly linear in s where b vanishes like e^{-x²/2s²}."""
    b, _, vega = at.price
    halley = at.halley
    ln_b = np.log(b)
    inv_ln_b = _ONE / ln_b
    ln_beta = np.log(at.beta)
    elasticity = vega / b
    newton = (ln_beta - ln_b) * ln_b / ln_beta / elasticity
    hh3 = at.hh3 + _TWO * elasticity * elasticity * (_ONE + _THREE * inv_ln_b * (_ONE + inv_ln_b))
    halley_shift = _ONE + _TWO * inv_ln_b
    hh3 = hh3 - _THREE * halley * elasticity * halley_shift
    halley = halley - elasticity * halley_shift
    return _Derivatives(newton, halley, hh3, (b <= _ZERO) | (vega <= _ZERO))


def _middle(at: _AtS) -> _Derivatives:
    """g = b - β."""
    b, _, vega = at.price
    return _Derivatives((at.beta - b) / vega, at.halley, at.hh3, vega <= _ZERO)


def _high(at: _AtS) -> _Derivatives:
    """g = ln((b_max - β)/(b_max - b)): nearly linear in s where b saturates."""
    b, gap, vega = at.price
    gp = vega / gap
    newton = -np.log((at.b_max - at.beta) / gap) / gp
    hh3 = at.hh3 + gp * (2.0 * gp + 3.0 * at.halley)
    return _Derivatives(newton, at.halley + gp, hh3, (b >= at.b_max) | (vega <= _TINY))


_OBJECTIVES: Final = (_low, _middle, _high)  # indexed by LOW, MIDDLE, HIGH


def _derivatives(objective: IndexArray, at: _AtS) -> _Derivatives:
    """Each option's derivatives on its own objective.

    Where a batch mixes objectives, each objective present runs on every option and each
    option keeps its own's (`lean.pick`): per option, the same arithmetic as on its
    objective's options alone.
    """
    counts = np.bincount(objective, minlength=len(_OBJECTIVES))
    present = [(kind, derivatives(at)) for kind, derivatives in enumerate(_OBJECTIVES) if counts[kind]]
    return pick(objective, present)


def _householder_step(objective: IndexArray, problem: Problem, at: Bracket) -> _Step:
    beta, x, b_max, sinh_half = problem
    s = at.s
    price = otm_price(x, s, b_max, sinh_half)
    b = price.b
    # Narrow the bracket to s on the side it proved. Branch-free: s/True = s, s/False = inf,
    # s·False = 0 <= s_left; np.where on such random masks costs several times more.
    s_right = np.minimum(at.s_right, s / (b > beta))
    s_left = np.maximum(at.s_left, s * (b < beta))
    hs = x / s
    halley = hs * hs / s - _QUARTER * s  # b''/b'
    hh3 = halley * halley - _THREE * (hs / s) ** 2 - _QUARTER  # b'''/b'
    newton, halley, hh3, unusable = _derivatives(objective, _AtS(price, beta, b_max, halley, hh3))
    ds = newton * (_ONE + _HALF * halley * newton) / (_ONE + newton * (halley + hh3 * newton / _SIX))
    ds = np.maximum(_MINUS_HALF * s, ds)
    s_new = s + ds
    # Bisect where b under- or overflowed, or where the step would leave the bracket.
    sound = np.isfinite(s_new) & (s_new >= s_left) & (s_new <= s_right) & ~unusable
    if not every(sound):
        s_new = np.where(sound, s_new, _midpoint(s_left, s_right))
    # Converged: a small Householder step, or a bracket that has closed on the root (which
    # steps cannot enter when it lies within an ulp of where b was last evaluated).
    small = sound & (np.abs(ds) <= _STEP_TOLERANCE * s)
    return _Step(Bracket(s_new, s_left, s_right), small | (s_right - s_left <= _PINNED_ARRAY * s_new))


def iterate(objective: IndexArray, problem: Problem, start: Bracket) -> tuple[FloatArray, BoolArray]:
    """Householder steps from `start`, each option on its own objective (LOW, MIDDLE or HIGH):
    FULL_BATCH_STEPS on all, then more only where needed.

    The objectives step together, so each step evaluates b once for the whole batch, whatever
    its mix of objectives; each option's arithmetic is still its own objective's alone.
    Returns s and where it converged (a last step of at most STEP_TOLERANCE·s). Callers hold
    np.errstate(all="ignore"), like `otm_price`'s.
    """
    at = start
    for _ in range(FULL_BATCH_STEPS):
        step = _householder_step(objective, problem, at)
        at = step.at
    s, s_left, s_right = at
    done = step.converged
    pending = indices(~done)
    for _ in range(MAX_STEPS - FULL_BATCH_STEPS):
        if pending.size == 0:
            break
        p = pending
        step = _householder_step(objective[p], problem.subset(p), Bracket(s[p], s_left[p], s_right[p]))
        s[p], s_left[p], s_right[p] = step.at
        done[p] = step.converged
        pending = p[~step.converged]
    return s, done
