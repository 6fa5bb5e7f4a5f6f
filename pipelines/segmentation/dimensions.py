"""A taxonomy's dimensions for every account, with missing data handled in the open.

- Each dimension's missing share is measured over the accounts that are clustered
  (surveyed accounts for a survey taxonomy, every customer for a behaviour one) and kept
  with the run (segment_runs.feature_missing).
- A dimension is left out of clustering, with the reason, when it has no data (empty for
  every account, or the same value for all), or when more than `max_missing_share` of the
  accounts lack it. At least one dimension must remain.
- The values left are imputed - survey items an account's respondents skipped count as
  average for them (0 on the relative scale), behavioural values take the median - and the
  imputed cells are remembered: explanations never cite an imputed value, and a cluster
  whose members mostly had one dimension imputed (`missingness_segments`) makes the run
  drop that dimension and cluster again, so missingness alone never defines a segment.
- Behavioural dimensions are standardised (z-scores, the scale of the prototypes); the mean
  and sd are kept (`scale`), so a run's centres can be stored in the dimensions' own units
  and read by the next run on its own scale (`to_raw`, `from_raw`). A
  taxonomy with `whiten: within` is clustered in a space whitened by the pooled
  within-segment covariance of a first k-means (correlated proxies of one need then count
  once, not once per proxy); centres, profiles and drivers stay on the z-score scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from pipelines.errors import NeedsegError
from pipelines.segmentation.taxonomy import Taxonomy

# A cluster "defined by missingness": at least this share of its members had a dimension imputed.
MISSINGNESS_DEFINES = 0.8


@dataclass
class Dimensions:
    values: pd.DataFrame  # accounts x kept dimensions: relative importance or z-scores, imputed
    imputed: pd.DataFrame  # bool, same shape: the value was missing and imputed
    missing_share: dict[str, float]  # every taxonomy dimension, over the clustered accounts
    left_out: dict[str, str]  # dimension -> why it is not clustered on
    taxonomy: Taxonomy  # restricted to the kept dimensions
    transform: np.ndarray  # values @ transform = the clustering space (identity unless whitened)
    # behavioural dimensions: the mean and sd (rows) each z-score was taken with, per
    # dimension (columns); None for survey needs, which have no raw units
    scale: pd.DataFrame | None = None

    def space(self, index: pd.Index) -> np.ndarray:
        return self.values.loc[index].to_numpy() @ self.transform

    def to_values(self, centres: np.ndarray) -> np.ndarray:
        return centres @ np.linalg.inv(self.transform)

    def to_space(self, centres: np.ndarray) -> np.ndarray:
        return centres @ self.transform

    def to_raw(self, centres: np.ndarray) -> np.ndarray:
        """Centres on the values' scale in the dimensions' own units (before standardising):
        comparable across runs, whose populations standardise differently."""
        if self.scale is None:
            return centres
        cols = list(self.values.columns)
        return centres * self.scale.loc["sd", cols].to_numpy() + self.scale.loc["mean", cols].to_numpy()

    def from_raw(self, raw: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return raw
        cols = list(self.values.columns)
        return (raw - self.scale.loc["mean", cols].to_numpy()) / self.scale.loc["sd", cols].to_numpy()

    def observed(self) -> pd.DataFrame:
        """The values with every imputed cell blank: what explanations may cite."""
        return self.values.mask(self.imputed)

    def without(self, dropped: dict[str, str], fit_index: pd.Index, seed: int) -> Dimensions:
        keep = [c for c in self.values.columns if c not in dropped]
        if not keep:
            raise NeedsegError(
                "every taxonomy dimension was left out for missing data: " + "; ".join(f"{d}: {w}" for d, w in dropped.items())
            )
        taxonomy = dataclasses.replace(self.taxonomy, dimensions=tuple(d for d in self.taxonomy.dimensions if d.name in keep))
        values = self.values[keep]
        transform = (
            within_whitening(values.loc[fit_index].to_numpy(), len(taxonomy.segments), seed) if taxonomy.whiten else np.eye(len(keep))
        )
        scale = self.scale[keep] if self.scale is not None else None
        return Dimensions(values, self.imputed[keep], self.missing_share, {**self.left_out, **dropped}, taxonomy, transform, scale)


def raw_dimensions(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """The taxonomy's dimensions for every account in `frame`, transformed, missing kept."""
    out = pd.DataFrame(index=frame.index)
    mix = None
    for d in taxonomy.dimensions:
        if d.column.startswith("category_share:"):
            if mix is None:
                mix = con.execute("select account_id, product_category, revenue_share from marts.customer_category_mix").df()
                mix = mix.pivot_table(index="account_id", columns="product_category", values="revenue_share", aggfunc="sum")
            category = d.column.split(":", 1)[1]
            if category not in mix.columns:
                raise NeedsegError(
                    f"taxonomy {taxonomy.path}: dimension {d.name!r} uses category {category!r}, which no order line has; categories are: {', '.join(map(str, mix.columns))}"
                )
            # no spend in a category is a share of 0, not a missing value
            values = frame["account_id"].map(mix[category]).fillna(0.0)
        elif d.column in frame.columns:
            values = pd.to_numeric(frame[d.column], errors="coerce")
        else:
            raise NeedsegError(
                f"taxonomy {taxonomy.path}: dimension {d.name!r} needs column {d.column!r}, which customer_features does not have "
                "(config/taxonomies/README.md lists the columns a taxonomy may use)"
            )
        if d.transform == "log1p":
            values = np.log1p(values.clip(lower=0))
        out[d.name] = values.astype(float)
    return out


def _left_out(raw: pd.DataFrame, share: pd.Series, max_missing_share: float, who: str) -> dict[str, str]:
    left_out = {}
    for name in raw.columns:
        observed = raw[name].dropna()
        if observed.empty:
            left_out[name] = f"no data: empty for every {who}"
        elif observed.nunique() <= 1:
            left_out[name] = f"no data: the same value ({observed.iloc[0]:g}) for every {who}"
        elif share[name] > max_missing_share:
            left_out[name] = (
                f"missing for {share[name]:.0%} of {who}s, more than the {max_missing_share:.0%} allowed (segmentation.max_missing_share)"
            )
    return left_out


def dimension_matrix(
    con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, taxonomy: Taxonomy, fit_index: pd.Index, max_missing_share: float, seed: int
) -> Dimensions:
    raw = raw_dimensions(con, frame, taxonomy)
    who = "surveyed customer" if taxonomy.basis == "survey" else "customer"
    share = raw.loc[fit_index].isna().mean() if len(fit_index) else pd.Series(1.0, index=raw.columns)
    left_out = _left_out(raw.loc[fit_index], share, max_missing_share, who)
    keep = [c for c in raw.columns if c not in left_out]
    if not keep:
        raise NeedsegError(
            f"taxonomy {taxonomy.path}: no dimension has enough data to segment on: " + "; ".join(f"{d}: {w}" for d, w in left_out.items())
        )
    kept = raw[keep]
    imputed = kept.isna()
    scale = None
    if taxonomy.basis == "survey":
        # an item the account's respondents skipped counts as average for them
        values = kept.fillna(0.0)
    else:
        reference = kept.loc[fit_index]
        filled = kept.fillna(reference.median())
        mean, sd = filled.loc[fit_index].mean(), filled.loc[fit_index].std(ddof=0).replace(0, 1.0)
        values = (filled - mean) / sd
        scale = pd.DataFrame([mean, sd], index=["mean", "sd"])
    restricted = dataclasses.replace(taxonomy, dimensions=tuple(d for d in taxonomy.dimensions if d.name in keep))
    dims = Dimensions(values, imputed, {k: round(float(v), 4) for k, v in share.items()}, left_out, restricted, np.eye(len(keep)), scale)
    if taxonomy.whiten:
        dims.transform = within_whitening(values.loc[fit_index].to_numpy(), len(taxonomy.segments), seed)
    return dims


def within_whitening(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A linear map that makes the pooled within-cluster covariance of a first k-means
    (k = the taxonomy's segments) the identity, scaled to keep the overall spread."""
    d = X.shape[1]
    if len(X) < 10 * k or d < 2:
        return np.eye(d)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    centres = np.array([X[labels == j].mean(axis=0) for j in range(k)])
    residual = X - centres[labels]
    cov = np.cov(residual.T) + 1e-3 * np.eye(d)
    eigenvalues, vectors = np.linalg.eigh(cov)
    return vectors @ np.diag(eigenvalues**-0.5) @ vectors.T


def missingness_segments(labels: np.ndarray, imputed: pd.DataFrame) -> dict[str, str]:
    """Dimensions whose imputed values make up a cluster: in some cluster at least
    MISSINGNESS_DEFINES of the members had the dimension imputed."""
    out = {}
    if not imputed.to_numpy().any():
        return out
    frame = imputed.reset_index(drop=True)
    by_cluster = frame.groupby(labels).mean()
    for name in imputed.columns:
        worst = by_cluster[name]
        if worst.max() >= MISSINGNESS_DEFINES:
            out[name] = (
                f"its missing values defined a segment ({worst.max():.0%} of one cluster's members had no value, "
                f"{frame[name].mean():.0%} of everyone): left out and clustered again"
            )
    return out
