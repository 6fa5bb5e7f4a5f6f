"""BG/NBD (Fader, Hardie & Lee 2005, package `lifetimes`): the probabilistic buy-till-you-die model.

Fitted per cutoff on every account's purchase days up to it (repeat purchases, age at the
last purchase, age now; in weeks), it gives the chance the account is still "alive" and
the chance it buys nothing in the next horizon:

    P(no purchase in t) = (1 - P(alive)) + P(alive) * ((alpha + T) / (alpha + T + t)) ** (r + x)

(an alive customer's purchase rate has a Gamma(r + x, alpha + T) posterior; in BG/NBD a
customer can only drop out right after a purchase, so a silent horizon needs no dropout
term). It is one input of the churn model, the baseline it is measured against, and the
churn probability itself when there is too little history to learn from.

A fit depends only on the accounts' purchase histories at its cutoff, and every run
refits the cutoffs it needs (its own, its training cutoffs, the earlier runs it scores
again), so a monthly schedule would fit the same history a dozen times. Given a
connection, the fitted parameters are kept in `churn.bgnbd_fits`, keyed by the cutoff and
a fingerprint of exactly the inputs (repeat purchases, ages, the penalties tried): the
same history reuses its fit (the same parameters, so the same figures); any change to it,
such as a late-loaded order, fits afresh. A read-only connection fits without keeping.

At scale the four parameters are fitted on a fixed sample of accounts (`churn.bgnbd_max_accounts`,
the churn model's hash order of account ids) and applied to every account; the fingerprint
is of the sample's inputs, so a kept fit is reused exactly when the sample's history is
unchanged. Below the cap every account is fitted, as before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
import warnings

import duckdb
import numpy as np
import pandas as pd

from pipelines.clock import utc_naive_now
from pipelines.warehouse import ensure_schema

log = logging.getLogger("needseg")

WEEK = 7.0
PENALTIES = (0.001, 0.01, 0.1, 1.0)
PARAMS = ("r", "alpha", "a", "b")
# bump when the fitting procedure changes, so kept fits from the old one are not reused
FIT_VERSION = 1


def _fingerprint(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> str:
    digest = hashlib.sha256(repr((FIT_VERSION, PENALTIES)).encode())
    for values in (x, t_x, T):
        digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()


class FitCache:
    """BG/NBD parameters per (cutoff, fingerprint of the inputs) in the warehouse."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        # A read-only warehouse: fit every time, keep nothing.
        self.writable = not con.execute("select readonly from duckdb_databases() where database_name = current_database()").fetchone()[0]
        if self.writable:
            ensure_schema(con)  # churn.bgnbd_fits: pipelines/warehouse/ddl/churn.sql

    def get(self, cutoff: dt.date, fingerprint: str) -> tuple | None:
        if not self.writable:
            return None
        return self.con.execute(
            "select converged, penalizer, r, alpha, a, b from churn.bgnbd_fits where cutoff = ? and fingerprint = ?", [cutoff, fingerprint]
        ).fetchone()

    def put(self, cutoff: dt.date, fingerprint: str, accounts: int, model) -> None:
        if not self.writable:
            return
        values = [float(model.params_[k]) for k in PARAMS] if model is not None else [None] * 4
        penalizer = float(model.penalizer_coef) if model is not None else None
        self.con.execute(
            "insert into churn.bgnbd_fits values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing",
            [cutoff, fingerprint, accounts, model is not None, penalizer, *values, utc_naive_now()],
        )


def _fit(x: np.ndarray, t_x: np.ndarray, T: np.ndarray):
    """The first BG/NBD fit that converges, from the smallest penalty up (None if none does)."""
    from lifetimes import BetaGeoFitter

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
        return candidate
    log.warning("BG/NBD did not converge on %d accounts at any penalty", len(x))
    return None


def _kept(row: tuple):
    """A fitter carrying the kept parameters (the same numbers the fit produced)."""
    from lifetimes import BetaGeoFitter

    converged, penalizer, *values = row
    if not converged:
        return None
    model = BetaGeoFitter(penalizer_coef=penalizer)
    model.params_ = pd.Series(values, index=list(PARAMS), dtype=float)
    return model


def _inputs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repeat purchases, age at the last purchase and age now (weeks)."""
    x = (frame["purchase_days"].to_numpy(float) - 1).clip(min=0)
    T = frame["first_purchase_age_days"].to_numpy(float) / WEEK
    t_x = (frame["first_purchase_age_days"] - frame["recency_days"]).to_numpy(float) / WEEK
    return x, t_x, T


def _fit_sample(frame: pd.DataFrame, max_accounts: int | None) -> pd.DataFrame:
    """The accounts the parameters are fitted on: all, or the first `max_accounts` in the
    churn model's fixed account order (pipelines.churn.run.account_order)."""
    if max_accounts is None or len(frame) <= max_accounts or "account_id" not in frame:
        return frame
    from pipelines.churn.run import account_order

    order = np.argsort(account_order(frame["account_id"]), kind="stable")[:max_accounts]
    return frame.iloc[np.sort(order)]


def fit_predict(frame: pd.DataFrame, horizon_days: float, cache: FitCache | None = None, max_accounts: int | None = None) -> pd.DataFrame:
    """Per row of `frame` (purchase_days, recency_days, first_purchase_age_days, one cutoff):
    bgnbd_p_alive, bgnbd_expected (purchases in the horizon) and bgnbd_p_no_purchase.
    Fitted on at most `max_accounts` of the rows (a fixed sample), applied to all."""
    x, t_x, T = _inputs(frame)
    t = horizon_days / WEEK
    out = pd.DataFrame(index=frame.index, columns=["bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_no_purchase"], dtype=float)
    if len(frame) < 20 or (x > 0).sum() < 5:
        return out
    fx, ft_x, fT = _inputs(_fit_sample(frame, max_accounts))
    cutoff = frame["cutoff"].iloc[0] if cache is not None and "cutoff" in frame else None
    key = _fingerprint(fx, ft_x, fT) if cutoff is not None else None
    row = cache.get(cutoff, key) if key is not None else None
    if row is not None:
        model = _kept(row)
    else:
        model = _fit(fx, ft_x, fT)
        if key is not None:
            cache.put(cutoff, key, len(fx), model)
    if model is None:
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


def per_cutoff(
    frame: pd.DataFrame, horizon_days: float, con: duckdb.DuckDBPyConnection | None = None, max_accounts: int | None = None
) -> pd.DataFrame:
    """BG/NBD fitted separately at every cutoff of `frame` (each on what was known then, on at
    most `max_accounts` accounts); with `con`, fits are kept in and reused from the warehouse
    (`churn.bgnbd_fits`)."""
    cache = FitCache(con) if con is not None else None
    parts = [fit_predict(group, horizon_days, cache, max_accounts) for _, group in frame.groupby("cutoff", sort=True)]
    columns = ["bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_no_purchase"]
    return pd.concat(parts).reindex(frame.index) if parts else pd.DataFrame(index=frame.index, columns=columns, dtype=float)
