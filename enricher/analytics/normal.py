"""The normal distribution in vectorised numpy, accurate to a few ulps, without scipy.

`erfc` and `erfcx` are W. J. Cody's rational Chebyshev approximations ("Rational Chebyshev
approximations for the error function", Math. Comp. 23 (1969) 631-638; the coefficients of
his CALERF, as in Jäckel's LetsBeRational), with relative error ~1e-16. Cody has three
forms, for |x| up to 0.46875, up to 4, and beyond; each runs only on the elements in its
range (index, compute, scatter back), which costs a third of evaluating all three on every
element and selecting. exp(-x²) is split as Cody does, so the tails keep full precision.

`ndtr` and `erfcx_moderate` are the exceptions: they map the C library's erfc over the
elements, which costs less than any numpy evaluation at a chain's size (see there).

`ndtri_approx` is P. J. Acklam's inverse normal (relative error < 1.2e-9): only good
enough for initial guesses, which is all the implied-vol solver asks of it.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from enricher.analytics.lean import constants, indices

FloatArray = npt.NDArray[np.float64]

_SQRT1_2: Final = 0.70710678118654752440084436210484903928483593768847
_INV_SQRT_2PI: Final = 0.39894228040143267793994605993438186847585863116493
_INV_SQRT_PI: Final = 0.56418958354775628694807945156077258584405062932900

# Cody's ranges: erf by A/B below _SMALL, erfcx by C/D up to _LARGE, by P/Q beyond.
_SMALL: Final = 0.46875
_LARGE: Final = 4.0
# erfc underflows to zero past ~27.3; clipping there keeps inf and huge inputs NaN-free.
_ERFC_ZERO: Final = 27.5
# The numbers of the hot paths, Cody's coefficients among them, as 0-d arrays (see `lean.constants`).
_SMALL_ARRAY, _LARGE_ARRAY, _ONE, _HALF, _MINUS_SQRT1_2 = constants(_SMALL, _LARGE, 1.0, 0.5, -_SQRT1_2)
_SIXTEEN, _SIXTEENTH = constants(16.0, 0.0625)
_A: Final = constants(3.1611237438705656, 113.864154151050156, 377.485237685302021, 3209.37758913846947)
_A4, _C8, _P4, _P5, _Q4 = constants(
    0.185777706184603153, 2.15311535474403846e-8, 6.58749161529837803e-4, 0.0163153871373020978, 0.00233520497626869185
)
_B: Final = constants(23.6012909523441209, 244.024637934444173, 1282.61652607737228, 2844.23683343917062)
_C: Final = constants(
    0.564188496988670089,
    8.88314979438837594,
    66.1191906371416295,
    298.635138197400131,
    881.95222124176909,
    1712.04761263407058,
    2051.07837782607147,
    1230.33935479799725,
)
_D: Final = constants(
    15.7449261107098347,
    117.693950891312499,
    537.181101862009858,
    1621.38957456669019,
    3290.79923573345963,
    4362.61909014324716,
    3439.36767414372164,
    1230.33935480374942,
)
_P: Final = constants(0.305326634961232344, 0.360344899949804439, 0.125781726111229246, 0.0160837851487422766)
_Q: Final = constants(2.56852019228982242, 1.87295284992346047, 0.527905102951428412, 0.0605183413124413191)


def erf_small(y: FloatArray) -> FloatArray:
    """erf(y) for |y| <= 0.46875, where erfc-based forms would lose digits to 1 - erfc."""
    ysq = y * y
    num = _A4 * ysq
    den = ysq.copy()
    for a, b in zip(_A[:3], _B[:3], strict=True):
        num += a
        num *= ysq
        den += b
        den *= ysq
    return y * (num + _A[3]) / (den + _B[3])


def _erfcx_middle(y: FloatArray) -> FloatArray:
    """erfcx(y) for 0.46875 <= y <= 4."""
    num = _C8 * y
    den = y.copy()
    for c, d in zip(_C[:7], _D[:7], strict=True):
        num += c
        num *= y
        den += d
        den *= y
    num += _C[7]
    den += _D[7]
    return num / den


def erfcx_large_correction(y: FloatArray) -> FloatArray:
    """c(y) = 1/(√π·y) - erfcx(y), for y >= 4 (Cody's asymptotic form in 1/y², no exponential).

    A difference erfcx(p) - erfcx(q) of close large arguments is (q - p)/(√π·p·q) - c(p) + c(q):
    exact in its leading term, so it keeps the digits the plain difference would lose.
    """
    z = 1.0 / (y * y)
    num = _P5 * z
    den = z.copy()
    for p, q in zip(_P, _Q, strict=True):
        num += p
        num *= z
        den += q
        den *= z
    return z * (num + _P4) / ((den + _Q4) * y)


def _erfcx_large(y: FloatArray) -> FloatArray:
    return _INV_SQRT_PI / y - erfcx_large_correction(y)


def erfcx_nonnegative(y: FloatArray) -> FloatArray:
    """exp(y²)·erfc(y) for y >= 0 (NaN propagates); the implied-vol solver's workhorse.

    Each of Cody's three forms runs only on the elements in its range: a third of the
    work of evaluating all three and selecting. Negative y is not supported: there
    erfcx grows like 2·exp(y²), and callers reflect themselves to keep that exponential
    out of differences.
    """
    shape = np.shape(y)
    y = np.ravel(y)
    out = np.empty_like(y)
    small = y <= _SMALL_ARRAY
    large = y > _LARGE_ARRAY
    # No np.errstate: no form can over- or underflow on its range, and NaN is quiet.
    at = indices(small)
    if at.size:
        ys = y[at]
        out[at] = np.exp(ys * ys) * (_ONE - erf_small(ys))
    at = indices(~(small | large))  # NaN lands here, and stays NaN
    if at.size:
        out[at] = _erfcx_middle(y[at])
    at = indices(large)
    if at.size:
        out[at] = _erfcx_large(y[at])
    return out.reshape(shape)


def erfcx_moderate(y: FloatArray) -> FloatArray:
    """erfcx(y) for 0 <= y <= 26, as the C library's erfc(y) times exp(y²), split as Cody does.

    As precise as `erfcx_nonnegative` (both within 5 ulps of erfcx computed to 40 digits with
    mpmath, on 53,000 points over [0, 26]), and on a chain's worth of elements a quarter of its cost:
    one map over `math.erfc` (~25 ns an element, see `ndtr`) and eight numpy calls, against
    Cody's three forms, each gathered and scattered (~23 µs on 42 elements). On batches of
    thousands Cody's forms are faster, ~21 ns an element against ~45.
    Past 26 erfc(y) nears the end of the normal range and loses digits.
    """
    u = np.trunc(y * _SIXTEEN) * _SIXTEENTH  # exact; so is u·u, for y < 2^21
    scale = np.exp(u * u) * np.exp((y - u) * (y + u))
    out: FloatArray = scale * _erfc_each(y)
    return out


def _erfc_each(x: FloatArray) -> FloatArray:
    """The C library's erfc of every element, in `x`'s shape: a map over `math.erfc`."""
    flat = np.ravel(x).tolist()
    return np.fromiter(map(math.erfc, flat), dtype=np.float64, count=len(flat)).reshape(np.shape(x))


def _exp_minus_square(y: FloatArray) -> FloatArray:
    """exp(-y²) for y >= 0 to full relative precision.

    exp(-y*y) would inherit the rounding of y*y, amplified by y² (1e-13 near y = 27).
    Cody's split: y = u + d with u a multiple of 1/16, so u*u is exact.
    """
    u = np.trunc(y * 16.0) / 16.0
    return np.exp(-u * u) * np.exp(-(y - u) * (y + u))


def erfcx(x: npt.ArrayLike) -> FloatArray:
    """Scaled complementary error function exp(x²)·erfc(x), for any real x (inf past -26.6)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.abs(x)
    with np.errstate(all="ignore"):
        positive = erfcx_nonnegative(y)
        # erfcx(-y) = 2·exp(y²) - erfcx(y); exp(y²) = 1/exp(-y²) keeps the split's precision.
        reflected = 2.0 / _exp_minus_square(np.minimum(y, _ERFC_ZERO)) - positive
        out = np.where(x < 0.0, reflected, positive)
        return np.where(x == -np.inf, np.inf, out)


def erfc(x: npt.ArrayLike) -> FloatArray:
    """Complementary error function, relative error ~1e-16 (underflows to 0 past 27.3)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.abs(x)
    with np.errstate(all="ignore"):
        central = 1.0 - erf_small(np.clip(x, -_SMALL, _SMALL))
        yc = np.minimum(y, _ERFC_ZERO)
        tail = erfcx_nonnegative(yc) * _exp_minus_square(yc)
        tail = np.where(x < 0.0, 2.0 - tail, tail)
        return np.where(y <= _SMALL, central, tail)


def ndtr(z: npt.ArrayLike) -> FloatArray:
    """Standard normal CDF, with full relative precision in the lower tail.

    Through the C library's erfc, one element at a time: as precise as Cody's `erfc` (the two
    agree to a few ulps), and cheaper at every size the model sees. A map over `math.erfc`
    costs ~25 ns an element; `erfc` costs ~40 µs a call in numpy overhead before its ~30 ns
    an element, which is most of a 21-strike chain's greeks.
    """
    return _HALF * _erfc_each(np.multiply(z, _MINUS_SQRT1_2))


def norm_pdf(z: npt.ArrayLike) -> FloatArray:
    zf = np.asarray(z, dtype=np.float64)
    return _INV_SQRT_2PI * np.exp(-0.5 * zf * zf)


# Acklam's coefficients, https://web.archive.org/web/20151030215612/http://home.online.no/~pjacklam/notes/invnorm/
_ACK_A: Final = (
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.3577518672690,
    -30.66479806614716,
)
_ACK_A5: Final = 2.506628277459239
_ACK_B: Final = (
    -54.47609879822406,
    161.5858368580409,
    -155.6989798598866,
    66.80131188771972,
    -13.28068155288572,
)
_ACK_C: Final = (
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
)
_ACK_C5: Final = 2.938163982698783
_ACK_D: Final = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
_ACK_TAIL: Final = 0.02425


def ndtri_approx(p: FloatArray) -> FloatArray:
    """Φ⁻¹(p) to ~1e-9 relative, for 0 < p <= 0.5 (the lower half is all the solver needs)."""
    with np.errstate(all="ignore"):
        q = np.minimum(p, 0.5) - 0.5
        r = q * q
        num = _ACK_A[0] * r
        den = _ACK_B[0] * r
        for a, b in zip(_ACK_A[1:], _ACK_B[1:], strict=True):
            num += a
            num *= r
            den += b
            den *= r
        central = (num + _ACK_A5) * q / (den + 1.0)
        t = np.sqrt(-2.0 * np.log(np.minimum(p, _ACK_TAIL)))
        num = _ACK_C[0] * t
        den = _ACK_D[0] * t
        for c in _ACK_C[1:]:
            num += c
            num *= t
        for d in _ACK_D[1:]:
            den += d
            den *= t
        tail = (num + _ACK_C5) / (den + 1.0)
        return np.where(p < _ACK_TAIL, tail, central)
