"""BG/NBD (Fader, Hardie & Lee 2005, package `lifetimes`): the probabilistic buy-till-you-die model.

Fitted per cutoff on every account's purchase days up to it (repeat purchases, age at the
last purchase, age now; in weeks), it gives the chance the account is still "alive" and
the chance it buys nothing in the next horizon:

    P(no purchase in t) = (1 - P(alive)) + P(alive) * ((alpha + T) / (alpha + T + t)) ** (r + x)

(an alive customer's purchase rate has a Gamma(r + x, alpha + T) posterior; in BG/NBD a
customer can only drop out right after a purchase, so a silent horizon needs no dropout
term). It is one input of the churn model, the baseline it is measured against, and the
churn probability itself when there is too little history to learn from.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import pandas as pd

log = logging.getLogger("needseg")

WEEK = 7.0
PENALTIES = (0.001, 0.01, 0.1, 1.0)


def fit_predict(frame: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
    """Per row of `frame` (purchase_days, recency_days, first_purchase_age_days, one cutoff):
    bgnbd_p_alive, bgnbd_expected (purchases in the horizon) and bgnbd_p_no_purchase."""
    from lifetimes import BetaGeoFitter

    x = (frame["purchase_days"].to_numpy(float) - 1).clip(min=0)
    T = frame["first_purchase_age_days"].to_numpy(float) / WEEK
    t_x = (frame["first_purchase_age_days"] - frame["recency_days"]).to_numpy(float) / WEEK
    t = horizon_days / WEEK
    out = pd.DataFrame(index=frame.index, columns=["bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_no_purchase"], dtype=float)
    if len(frame) < 20 or (x > 0).sum() < 5:
        return out
    model = None
    # On short histories the likelihood pushes the dropout parameters to 0 and the optimiser
    # reports no convergence; a little more penalty each time keeps the fit well posed.
    for penalty in PENALTIES:
        candidate = BetaGeoFitter(penalizer_coef=penalty)
        try:
            # lifetimes prints the optimiser's state before it raises on no convergence
            with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                candidate.fit(x, t_x, T)
        except Exception:  # noqa: BLE001 - lifetimes raises ConvergenceError; try the next penalty
            continue
        model = candidate
        break
    if model is None:
        log.warning("BG/NBD did not converge on %d accounts at any penalty", len(frame))
        return out
    r, alpha = model.params_["r"], model.params_["alpha"]
    with np.errstate(all="ignore"):
        p_alive = np.clip(model.conditional_probability_alive(x, t_x, T), 0, 1)
        expected = model.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
        silent = ((alpha + T) / (alpha + T + t)) ** (r + x)
    out["bgnbd_p_alive"] = p_alive
    out["bgnbd_expected"] = np.asarray(expected, float)
    out["bgnbd_p_no_purchase"] = np.clip((1 - p_alive) + p_alive * silent, 0, 1)
    return out


def per_cutoff(frame: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
    """BG/NBD fitted separately at every cutoff of `frame` (each on what was known then)."""
    parts = [fit_predict(group, horizon_days) for _, group in frame.groupby("cutoff", sort=True)]
    columns = ["bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_no_purchase"]
    return pd.concat(parts).reindex(frame.index) if parts else pd.DataFrame(index=frame.index, columns=columns, dtype=float)
