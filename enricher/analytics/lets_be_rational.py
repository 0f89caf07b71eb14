"""Implied normalised volatility as in Jäckel's "Let's Be Rational", vectorised, in about one step.

P. Jäckel, "Let's Be Rational", Wilmott (2015) 40-53, http://www.jaeckel.org/LetsBeRational.pdf.
For x = ln(F/K) <= 0 and an OTM normalised price 0 < β < e^{x/2}, find s = σ√T with
b(x, s) = β. Jäckel guesses s to within ~9% (`rational_guess`), then takes two third-order
Householder steps (`normalised_black`). His guess costs two evaluations of b per option;
here tables replace it, built once at import (~0.1 s) by solving with his method:

  - the prices b_l < b_c < b_h that split his guess into four branches, and the vols s_l
    and s_h at two of them, depend on x alone: their logarithms are tabulated against ln|x|;
  - within a branch, s over a closed-form reference with the branch's asymptotics (far out
    of the money, |x|/√(2 ln(b_max/β))) is a smooth function ψ of ln|x| and of β's position
    u in the branch: tabulated on a 129 x 129 grid against ln|x| and √u, read bilinearly.

The guess is then within ~3e-5 typically (1e-4 for 99% of options, 1e-2 at worst). A
Householder step leaves an error of about its own size to the 4th power, so after one step
only the options whose step was not small (~2% of them) take more, as a subset. Each
option steps on Jäckel's objective for its branch, all objectives in the same steps, so
a step evaluates b once for the batch.
Moneyness off the tables takes another guess: below 1e-12, the price at x = 0 inverted in
closed form (`_at_the_money`); beyond 16, Jäckel's exact guess, which costs ~0.6 ms a call.
x = 0 is common: a forward implied by parity from prices in ticks can land exactly on a
strike (22 of 400 synthetic chains). Either way, all options then step together.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np

from enricher.analytics.lean import constants, every, frozen, indices, pick
from enricher.analytics.normal import FloatArray, ndtri_approx
from enricher.analytics.normalised_black import HIGH, LOW, MIDDLE, BoolArray, Problem, bracket, iterate
from enricher.analytics.rational_guess import (
    B_C,
    B_H,
    B_L,
    S_H,
    S_L,
    Guess,
    IndexArray,
    exact_nodes,
    jaeckel_guess,
)

AX_MIN: Final = 1e-12
AX_MAX: Final = 16.0
_ETA_LOW: Final = math.log(AX_MIN)
_ETA_HIGH: Final = math.log(AX_MAX)
_PSI_ETA: Final = 129
_PSI_U: Final = 129
# Every ψ row on a node row: the nodes ψ was built with are the nodes it is read with.
_NODE_ROWS: Final = 8 * (_PSI_ETA - 1) + 1
_NODE_SCALE: Final = (_NODE_ROWS - 1) / (_ETA_HIGH - _ETA_LOW)
_PSI_SCALE: Final = (_PSI_ETA - 1) / (_ETA_HIGH - _ETA_LOW)
# Offsets into PSI, flattened, of a cell's corners from its first: (i, j), (i, j+1), (i+1, j), (i+1, j+1).
_PSI_CORNERS: Final = frozen(np.array([[0], [1], [_PSI_U], [_PSI_U + 1]]))
_LN2: Final = math.log(2.0)
_SQRT_2PI: Final = math.sqrt(2.0 * math.pi)
# Below this β, at x = 0, 1 - β would lose β's digits; erf's leading term is within πβ²/12.
_ATM_SMALL_BETA: Final = 1e-4
_TINY_PRICE: Final = 1e-300
# The tables' b_c may put a β within ~1e-4 of it on the wrong side of s_c: widen by this.
_WIDE: Final = 1.01
_NARROW: Final = 0.99

LOWER_OUTER, LOWER_MIDDLE, UPPER_MIDDLE, UPPER_OUTER = range(4)

# What the guess computes with, as 0-d arrays (see `lean.constants`).
_ZERO, _HALF, _ONE, _TWO, _MINUS_TWO, _EIGHT, _INFINITY = constants(0.0, 0.5, 1.0, 2.0, -2.0, 8.0, math.inf)
_AX_MIN, _AX_MAX = constants(AX_MIN, AX_MAX)
_ETA_LOW_ARRAY, _NODE_SCALE_ARRAY, _PSI_SCALE_ARRAY, _LN2_ARRAY, _PSI_U_STEPS = constants(
    _ETA_LOW, _NODE_SCALE, _PSI_SCALE, _LN2, _PSI_U - 1
)
_LAST_NODE_ROW, _LAST_PSI_ROW, _LAST_PSI_COLUMN, _PSI_ETA_ARRAY, _PSI_U_ARRAY = (
    frozen(np.array(i, dtype=np.intp)) for i in (_NODE_ROWS - 2, _PSI_ETA - 2, _PSI_U - 2, _PSI_ETA, _PSI_U)
)


def _iterate_all(problem: Problem, guess: Guess) -> tuple[FloatArray, BoolArray]:
    """Householder steps from the guess, each option on the objective its branch of Jäckel's guess gives it."""
    return iterate(guess.objective, problem, bracket(guess.s, guess.s_left, guess.s_right))


def _solve_exactly(beta: FloatArray, x: FloatArray) -> tuple[FloatArray, BoolArray]:
    return _iterate_all(Problem.of(beta, x), jaeckel_guess(beta, x))


def _at_the_money(beta: FloatArray, x: FloatArray) -> Guess:
    """The guess for |x| < AX_MIN: b(0, s) = 2Φ(s/2) - 1 inverted, s = -2·Φ⁻¹((1 - β₀)/2), at
    β₀ = β - x/2, since b(x, s) = b(0, s) + x/2 + O(x²/s).

    Acklam's Φ⁻¹ is within ~1e-9, so one Householder step is enough, as from the tables. The
    objective is Jäckel's for b_max ≈ 1: b - β, or ln((b_max - β)/(b_max - b)) past b_max/2.
    """
    beta_0 = beta - _HALF * x
    small = beta_0 < _ATM_SMALL_BETA
    s = np.where(small, _SQRT_2PI * beta_0, -_TWO * ndtri_approx(_HALF * (_ONE - beta_0)))
    objective = np.where(beta > _HALF * np.exp(_HALF * x), HIGH, MIDDLE)
    return Guess(s, objective, np.zeros_like(beta), np.full_like(beta, math.inf))


class _Position(NamedTuple):
    u: FloatArray  # β's place in its branch, 0 to 1
    reference: FloatArray  # the closed-form s that ψ multiplies


def _lower_outer(ln_beta: FloatArray, x: FloatArray, ln_b_l: FloatArray) -> _Position:
    # ln β runs to -∞: u = 1/(1 + ln(b_l/β)) is 1 at b_l and 0 at β = 0.
    u = _ONE / (_ONE + ln_b_l - ln_beta)
    return _Position(u, -x / np.sqrt(x - _TWO * ln_beta))  # |x|/√(2 ln(b_max/β))


def _lower_middle(
    ln_beta: FloatArray, x: FloatArray, ln_b_l: FloatArray, ln_b_c: FloatArray, ln_s_l: FloatArray
) -> _Position:
    # For small |x|, s spans decades here: interpolate ln s in ln β.
    u = (ln_beta - ln_b_l) / (ln_b_c - ln_b_l)
    ln_s_c = _HALF * (_LN2_ARRAY + np.log(-x))
    return _Position(u, np.exp(ln_s_l + u * (ln_s_c - ln_s_l)))


def _upper_middle(beta: FloatArray, x: FloatArray, b_c: FloatArray, b_h: FloatArray, s_h: FloatArray) -> _Position:
    u = (beta - b_c) / (b_h - b_c)
    s_c = np.sqrt(_MINUS_TWO * x)
    return _Position(u, s_c + u * (s_h - s_c))


def _upper_outer(beta: FloatArray, x: FloatArray, b_h: FloatArray) -> _Position:
    # b_max - β runs to 0: u = 1/(1 + ln((b_max - b_h)/(b_max - β))) is 1 at b_h, 0 at b_max.
    b_max = np.exp(_HALF * x)
    ln_gap = np.log(b_max - beta)
    u = _ONE / (_ONE + np.log(b_max - b_h) - ln_gap)
    return _Position(u, np.sqrt(_EIGHT * (_HALF * x - ln_gap)))  # 2√(2 ln(b_max/(b_max - β)))


def _build_tables() -> tuple[FloatArray, FloatArray, FloatArray]:
    """The node table (logs of b_c, b_l, b_h, s_l, s_h against ln|x|) with its slopes, and ψ."""
    with np.errstate(all="ignore"):
        nodes = exact_nodes(-np.exp(np.linspace(_ETA_LOW, _ETA_HIGH, _NODE_ROWS)))
        table = np.log(nodes[[B_C, B_L, B_H, S_L, S_H]])
        slopes = np.zeros_like(table)
        slopes[:, :-1] = np.diff(table, axis=1)

        grid = np.linspace(0.0, 1.0, _PSI_U)
        x = np.repeat(-np.exp(np.linspace(_ETA_LOW, _ETA_HIGH, _PSI_ETA)), _PSI_U)
        nodes = exact_nodes(x)
        b_c, b_l, b_h, s_h = nodes[B_C], nodes[B_L], nodes[B_H], nodes[S_H]
        b_max = np.exp(0.5 * x)
        psi = np.full((4, x.size), np.nan)
        for branch in range(4):
            u = np.tile(grid**2, _PSI_ETA)  # ψ is tabulated against √u: finer towards u = 0
            if branch == LOWER_OUTER:
                beta = b_l * np.exp(1.0 - 1.0 / u)
            elif branch == LOWER_MIDDLE:
                beta = b_l * (b_c / b_l) ** u
            elif branch == UPPER_MIDDLE:
                beta = b_c + u * (b_h - b_c)
            else:
                beta = b_max - (b_max - b_h) * np.exp(1.0 - 1.0 / u)
            # Prices that underflow (or round to b_max) are never quoted: their cells are filled.
            ok = np.flatnonzero((beta > _TINY_PRICE) & (beta < b_max))
            bt, xt, ln_bt = beta[ok], x[ok], np.log(beta[ok])
            if branch == LOWER_OUTER:
                where = _lower_outer(ln_bt, xt, np.log(b_l[ok]))
            elif branch == LOWER_MIDDLE:
                where = _lower_middle(ln_bt, xt, np.log(b_l[ok]), np.log(b_c[ok]), np.log(nodes[S_L, ok]))
            elif branch == UPPER_MIDDLE:
                where = _upper_middle(bt, xt, b_c[ok], b_h[ok], s_h[ok])
            else:
                where = _upper_outer(bt, xt, b_h[ok])
            s, done = _solve_exactly(bt, xt)
            ratio = s / where.reference
            psi[branch, ok] = np.where(done & np.isfinite(ratio), ratio, np.nan)
        grid3 = psi.reshape(4, _PSI_ETA, _PSI_U)
        grid3[[LOWER_OUTER, UPPER_OUTER], :, 0] = np.nan  # there β is 0 or b_max: ψ is a limit
        # Fill each row's unsolvable cells from the nearest solved one towards u = 1.
        rows = grid3.reshape(-1, _PSI_U)
        for row in rows:
            solved = np.flatnonzero(np.isfinite(row))
            if solved.size:
                row[:] = row[solved[np.minimum(np.searchsorted(solved, np.arange(_PSI_U)), solved.size - 1)]]
        return table, slopes, np.where(np.isfinite(rows), rows, 1.0).reshape(4, _PSI_ETA, _PSI_U)


_NODES, _NODE_SLOPES, PSI = _build_tables()


def _table_guess(beta: FloatArray, x: FloatArray) -> Guess:
    """Guess s from the tables; also Jäckel's objective and a bracket, per option.

    Each branch's formula runs on every option if any option is in the branch, and each
    option keeps its own branch's (`lean.pick`): per option, the same arithmetic as on its
    branch's options alone, in a third of the numpy calls.
    """
    eta = np.log(-x) - _ETA_LOW_ARRAY  # ln|x| from the tables' first row
    position = eta * _NODE_SCALE_ARRAY
    row = np.minimum(position.astype(np.intp), _LAST_NODE_ROW)
    weight = position - row
    # The table's rows, as `_build_tables` stacks them.
    ln_b_c, ln_b_l, ln_b_h, ln_s_l, ln_s_h = _NODES.take(row, axis=1) + weight * _NODE_SLOPES.take(row, axis=1)
    ln_beta = np.log(beta)
    lower = ln_beta < ln_b_c
    b_h = np.exp(ln_b_h)
    branch = np.where(
        lower,
        np.where(ln_beta < ln_b_l, LOWER_OUTER, LOWER_MIDDLE),
        np.where(beta > b_h, UPPER_OUTER, UPPER_MIDDLE),
    )
    present = np.bincount(branch, minlength=4)
    positions: list[tuple[int, _Position]] = []
    if present[LOWER_OUTER]:
        positions.append((LOWER_OUTER, _lower_outer(ln_beta, x, ln_b_l)))
    if present[LOWER_MIDDLE]:
        positions.append((LOWER_MIDDLE, _lower_middle(ln_beta, x, ln_b_l, ln_b_c, ln_s_l)))
    if present[UPPER_MIDDLE]:
        positions.append((UPPER_MIDDLE, _upper_middle(beta, x, np.exp(ln_b_c), b_h, np.exp(ln_s_h))))
    if present[UPPER_OUTER]:
        positions.append((UPPER_OUTER, _upper_outer(beta, x, b_h)))
    u, reference = pick(branch, positions)
    s = reference * _psi(branch, eta, u)
    objective = np.where(branch == LOWER_OUTER, LOW, MIDDLE)
    if present[UPPER_OUTER]:  # Jäckel's HIGH objective pays only where b is close to saturating
        objective[(branch == UPPER_OUTER) & (beta > _HALF * np.exp(_HALF * x))] = HIGH
    s_c = np.sqrt(_MINUS_TWO * x)
    return Guess(s, objective, np.where(lower, _ZERO, _NARROW * s_c), np.where(lower, _WIDE * s_c, _INFINITY))


def _psi(branch: IndexArray, eta: FloatArray, u: FloatArray) -> FloatArray:
    """Bilinear interpolation of ψ(branch, ln|x|, √u), `eta` being ln|x| from the first row."""
    position = eta * _PSI_SCALE_ARRAY
    i = np.minimum(position.astype(np.intp), _LAST_PSI_ROW)
    w_eta = position - i
    position = np.sqrt(np.fmin(np.fmax(u, _ZERO), _ONE)) * _PSI_U_STEPS  # fmax maps NaN to 0
    j = np.minimum(position.astype(np.intp), _LAST_PSI_COLUMN)
    w_u = position - j
    k = (branch * _PSI_ETA_ARRAY + i) * _PSI_U_ARRAY + j
    r00, r01, r10, r11 = PSI.take(k + _PSI_CORNERS, mode="clip")  # the cell's four corners
    psi: FloatArray = r00 + w_u * (r01 - r00) + w_eta * (r10 - r00 + w_u * (r11 - r10 - r01 + r00))
    return psi


def _guesses(beta: FloatArray, x: FloatArray, tabulated: BoolArray, near: BoolArray) -> Guess:
    """Each option's guess: from the tables, at the money (`near`), else Jäckel's exact one."""
    s, s_left, s_right = np.empty_like(beta), np.empty_like(beta), np.empty_like(beta)
    objective = np.empty(beta.shape, dtype=np.intp)
    for mask, guess in ((tabulated, _table_guess), (near, _at_the_money), (~(tabulated | near), jaeckel_guess)):
        at = indices(mask)  # the last: far out of the money, and NaN
        if at.size:
            s[at], objective[at], s_left[at], s_right[at] = guess(beta[at], x[at])
    return Guess(s, objective, s_left, s_right)


def implied_s(beta: FloatArray, x: FloatArray) -> tuple[FloatArray, BoolArray]:
    """s = σ√T with b(x, s) = beta, for x <= 0 and 0 < beta < e^{x/2}; and where it converged.

    Callers hold np.errstate(all="ignore"): the solver's steps under- and overflow on purpose.
    """
    if not beta.size:
        return np.empty_like(beta), np.empty(beta.shape, dtype=np.bool_)
    ax = -x
    tabulated = (ax >= _AX_MIN) & (ax < _AX_MAX)
    # The usual batch has nothing to split, gather or scatter; others gather each kind of
    # guess, and then all step together, as the usual batch does.
    guess = _table_guess(beta, x) if every(tabulated) else _guesses(beta, x, tabulated, ax < _AX_MIN)
    s, done = _iterate_all(Problem.of(beta, x), guess)
    return s, done & np.isfinite(s) & (s > _ZERO)
