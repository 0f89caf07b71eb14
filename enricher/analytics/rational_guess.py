"""Jäckel's initial guess for the implied normalised volatility, vectorised.

P. Jäckel, "Let's Be Rational", Wilmott (2015) 40-53, http://www.jaeckel.org/LetsBeRational.pdf,
section 4. For x = ln(F/K) <= 0 and an OTM normalised price 0 < β < e^{x/2}, the guess picks
one of four branches by where β lies among b_l < b_c < b_h, the prices at s_l < s_c < s_h
(s_c = √(2|x|) is b's inflection point, s_l and s_h where b's tangent there reaches 0 and
b_max), and interpolates, by a shape-preserving rational cubic, s itself between
neighbouring points or, in the outer branches, his lower map (2π|x|/√27·Φ(-|x|/(√3s))³) or
upper map (Φ(-s/2)), whose inverses are explicit. It is off by at most ~9%, and two
Householder steps from it reach machine precision.

This is the slow, exact path: it evaluates b twice per option to find b_l and b_h.
`lets_be_rational` uses it to build its tables, and for moneyness off them.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from enricher.analytics.normal import FloatArray, erfcx_nonnegative, ndtri_approx
from enricher.analytics.normalised_black import HIGH, LOW, MIDDLE, otm_price

IndexArray = npt.NDArray[np.intp]

_SQRT3: Final = math.sqrt(3.0)
_SQRT_PI_2: Final = math.sqrt(0.5 * math.pi)
_SQRT_2PI: Final = math.sqrt(2.0 * math.pi)
_LOWER_MAP_SCALE: Final = 2.0 * math.pi / math.sqrt(27.0)
_EPS: Final = float(np.finfo(np.float64).eps)
_TINY: Final = float(np.finfo(np.float64).tiny)
_R_MIN: Final = -(1.0 - math.sqrt(_EPS))  # bounds of the rational cubic's control parameter
_R_MAX: Final = 2.0 / (_EPS * _EPS)

# Rows of `exact_nodes`: Jäckel's interpolation data, functions of x alone.
B_C, B_L, S_L, INV_V_L, F_L, FP_L, B_H, S_H, INV_V_H, F_H, FP_H, R_LL, R_LM, R_HM, R_HH = range(15)


def _control_parameter(
    x_l: FloatArray | float,
    x_r: FloatArray,
    y_l: FloatArray | float,
    y_r: FloatArray | float,
    d_l: FloatArray | float,
    d_r: FloatArray | float,
    second: FloatArray | float,
    *,
    fit_right: bool,
    prefer_shape: bool,
) -> FloatArray:
    """Jäckel's convex_rational_cubic_control_parameter_to_fit_second_derivative_at_{right,left}_side.

    The parameter that makes the rational cubic's second derivative `second` at one end,
    but never below the minimum that keeps it monotone and convex or concave
    (R. Delbourgo, J. A. Gregory, SIAM J. Sci. Stat. Comput. 6 (1985) 967-976).
    """
    h = np.subtract(x_r, x_l)
    slope = np.subtract(y_r, y_l) / h
    num = 0.5 * h * second + np.subtract(d_r, d_l)
    den = d_r - slope if fit_right else slope - d_l
    r_fit = np.where(np.abs(den) < _TINY, np.where(num > 0.0, _R_MAX, _R_MIN), num / den)
    r_fit = np.where(np.abs(num) < _TINY, 0.0, r_fit)
    unbounded = _R_MAX if prefer_shape else -np.inf
    monotonic = (np.multiply(d_l, slope) >= 0.0) & (np.multiply(d_r, slope) >= 0.0)
    r1 = np.where(np.abs(slope) >= _TINY, np.add(d_r, d_l) / slope, unbounded)
    r1 = np.where(monotonic, r1, -np.inf)
    spread = np.abs(np.subtract(d_r, d_l))
    left_gap = np.abs(slope - d_l)
    right_gap = np.abs(d_r - slope)
    curved = ((d_l <= slope) & (slope <= d_r)) | ((d_l >= slope) & (slope >= d_r))
    r2 = np.where(
        (left_gap < _TINY) | (right_gap < _TINY), unbounded, np.maximum(spread / right_gap, spread / left_gap)
    )
    r2 = np.where(curved, r2, np.where(monotonic, unbounded, -np.inf))
    return np.maximum(r_fit, np.maximum(_R_MIN, np.maximum(r1, r2)))


def _rational_cubic(
    at: FloatArray,
    x_l: FloatArray | float,
    x_r: FloatArray,
    y_l: FloatArray | float,
    y_r: FloatArray | float,
    d_l: FloatArray | float,
    d_r: FloatArray | float,
    r: FloatArray,
) -> FloatArray:
    """The rational cubic with end values y, end slopes d and control parameter r, at `at`."""
    h = np.subtract(x_r, x_l)
    t = (at - x_l) / h
    omt = 1.0 - t
    cubic = ((y_r * t + (r * y_r - h * d_r) * omt) * t * t + ((r * y_l + h * d_l) * t + y_l * omt) * omt * omt) / (
        1.0 + (r - 3.0) * t * omt
    )
    return np.where(r >= _R_MAX, y_r * t + y_l * omt, cubic)  # r = ∞ is the straight line


def exact_nodes(x: FloatArray) -> FloatArray:
    """Jäckel's interpolation data for each x <= 0: shape (15, len(x)), rows B_C ... R_HH."""
    with np.errstate(all="ignore"):
        ax = -x
        b_max = np.exp(0.5 * x)
        sinh_half = np.sinh(0.5 * ax)
        s_c = np.sqrt(2.0 * ax)
        e_c = np.exp(-0.5 * ax)
        b_c = 0.5 * e_c * (1.0 - erfcx_nonnegative(np.sqrt(ax)))
        v_c = e_c / _SQRT_2PI
        s_l = s_c - b_c / v_c
        s_h = s_c + (b_max - b_c) / v_c
        low = otm_price(x, s_l, b_max, sinh_half)
        high = otm_price(x, s_h, b_max, sinh_half)
        b_l, b_h = low.b, high.b
        # Jäckel's lower map at s_l. Φ(-z) = e^{-y/2}·m/2 with y = z², m = erfcx(z/√2), so
        # the powers of Φ·e^{y/2} below stay finite where Φ itself underflows.
        z = ax / (_SQRT3 * s_l)
        y = z * z
        s2 = s_l * s_l
        mills = erfcx_nonnegative(z * math.sqrt(0.5))
        half_m = 0.5 * mills
        f_l = _LOWER_MAP_SCALE * ax * half_m**3 * np.exp(-1.5 * y)
        fp_l = 2.0 * math.pi * y * half_m * half_m * np.exp(0.125 * s2)
        shape = 8.0 * _SQRT3 * s_l * ax + (3.0 * s2 * (s2 - 8.0) - 8.0 * ax * ax) * _SQRT_PI_2 * mills
        fpp_l = (math.pi / 6.0) * y / (s2 * s_l) * half_m * shape * np.exp(1.5 * y + 0.25 * s2)
        # Jäckel's upper map at s_h.
        s2 = s_h * s_h
        f_h = 0.5 * erfcx_nonnegative(s_h * (0.5 * math.sqrt(0.5))) * np.exp(-0.125 * s2)
        w = (x / s_h) ** 2
        fp_h = -0.5 * np.exp(0.5 * w)
        fpp_h = _SQRT_PI_2 * np.exp(w + 0.125 * s2) * w / s_h
        inv_v_c, inv_v_l, inv_v_h = 1.0 / v_c, 1.0 / low.vega, 1.0 / high.vega
        r_ll = _control_parameter(0.0, b_l, 0.0, f_l, 1.0, fp_l, fpp_l, fit_right=True, prefer_shape=True)
        r_lm = _control_parameter(b_l, b_c, s_l, s_c, inv_v_l, inv_v_c, 0.0, fit_right=True, prefer_shape=False)
        r_hm = _control_parameter(b_c, b_h, s_c, s_h, inv_v_c, inv_v_h, 0.0, fit_right=False, prefer_shape=False)
        r_hh = _control_parameter(b_h, b_max, f_h, 0.0, fp_h, -0.5, fpp_h, fit_right=False, prefer_shape=True)
        columns = (b_c, b_l, s_l, inv_v_l, f_l, fp_l, b_h, s_h, inv_v_h, f_h, fp_h, r_ll, r_lm, r_hm, r_hh)
        return np.stack(columns)


class Guess(NamedTuple):
    s: FloatArray
    objective: IndexArray  # Jäckel's for the branch: LOW, MIDDLE or HIGH
    s_left: FloatArray  # a bracket of the root
    s_right: FloatArray


def jaeckel_guess(beta: FloatArray, x: FloatArray) -> Guess:
    """Jäckel's guess, one branch at a time, so each computes only its own formula."""
    with np.errstate(all="ignore"):
        nodes = exact_nodes(x)
        s, s_left, s_right = np.empty_like(beta), np.empty_like(beta), np.empty_like(beta)
        objective = np.full(beta.shape, MIDDLE, dtype=np.intp)
        ax = -x
        b_max = np.exp(0.5 * x)
        s_c = np.sqrt(2.0 * ax)
        inv_v_c = _SQRT_2PI * np.exp(0.5 * ax)
        b_c, b_l, s_l, b_h, s_h = nodes[B_C], nodes[B_L], nodes[S_L], nodes[B_H], nodes[S_H]
        lower = beta < b_c
        at = np.flatnonzero(lower & (beta < b_l))
        if at.size:
            bt, axt, bl, f_l = beta[at], ax[at], b_l[at], nodes[F_L, at]
            f = _rational_cubic(bt, 0.0, bl, 0.0, f_l, 1.0, nodes[FP_L, at], nodes[R_LL, at])
            t = bt / bl
            f = np.where(f > 0.0, f, (f_l * t + bl * (1.0 - t)) * t)  # Jäckel's fallback on roundoff
            s[at] = axt / (-_SQRT3 * ndtri_approx(np.cbrt(f / (_LOWER_MAP_SCALE * axt))))
            s_left[at], s_right[at], objective[at] = 0.0, s_l[at], LOW
        at = np.flatnonzero(lower & ~(beta < b_l))
        if at.size:
            d_l, r = nodes[INV_V_L, at], nodes[R_LM, at]
            s[at] = _rational_cubic(beta[at], b_l[at], b_c[at], s_l[at], s_c[at], d_l, inv_v_c[at], r)
            s_left[at], s_right[at] = s_l[at], s_c[at]
        at = np.flatnonzero(~lower & ~(beta > b_h))
        if at.size:
            d_r, r = nodes[INV_V_H, at], nodes[R_HM, at]
            s[at] = _rational_cubic(beta[at], b_c[at], b_h[at], s_c[at], s_h[at], inv_v_c[at], d_r, r)
            s_left[at], s_right[at] = s_c[at], s_h[at]
        at = np.flatnonzero(~lower & (beta > b_h))
        if at.size:
            bt, bm, bh, f_h = beta[at], b_max[at], b_h[at], nodes[F_H, at]
            f = _rational_cubic(bt, bh, bm, f_h, 0.0, nodes[FP_H, at], -0.5, nodes[R_HH, at])
            gap = bm - bh
            t = (bt - bh) / gap
            f = np.where(f > 0.0, f, (f_h * (1.0 - t) + 0.5 * gap * t) * (1.0 - t))
            s[at] = -2.0 * ndtri_approx(f)
            s_left[at], s_right[at] = s_h[at], np.inf
            # Jäckel's ln(b_max - b) objective pays only where b is close to saturating.
            objective[at[bt > 0.5 * bm]] = HIGH
        return Guess(s, objective, s_left, s_right)
