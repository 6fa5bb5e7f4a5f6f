"""The demo world: a deterministic synthetic B2B company written as monthly CRM extracts.

What it models (docs/design.md, "The domain in one page"):

- accounts with heavy-tailed sizes (about 80 % of revenue from 20 % of accounts), Nordic
  names with å/ä/ö, firmographics loosely tied to needs, owners, parent accounts;
- four latent needs segments. Each account has a continuous needs vector around its
  segment's prototype; that vector, not the label, drives discounts, product mix, order
  regularity, tickets, quotes and survey answers, each through its own noise and through
  confounders (big accounts get volume discounts whatever they need);
- survey waves every six months answered by a share of accounts, several respondents per
  account, each with their own response style (some rate everything high, some use the
  whole scale), blanks for "don't know";
- planted drifters whose needs move gradually towards price-sensitivity (or away from
  partnership) over 4 to 8 months, with falling revenue and satisfaction, some churning
  a few months after; drifters are drawn in proportion to how regularly they buy (an
  account that orders once a year has no buying pattern to drift); random churners with
  no drift before; temporary promotions that look like price-sensitivity but are not;
- prospects with firmographics and quotes but no orders.

The pipeline only ever reads `extracts/`. `truth/` holds what really happened and is read
by `needseg evaluate` alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.contract import NEEDS_ITEMS

SEGMENTS = ("price_focused", "service_focused", "quality_brand", "loyalty_partnership")

# Latent importance (1-5) of each needs item per segment, in NEEDS_ITEMS order:
# price, quality, brand, service, delivery, reliability, partnership.
PROTOTYPES = np.array(
    [
        [4.6, 2.9, 2.0, 2.7, 3.4, 3.0, 2.0],  # price_focused
        [2.7, 3.3, 2.5, 4.6, 4.1, 4.4, 3.0],  # service_focused
        [2.4, 4.6, 4.4, 3.4, 3.0, 3.7, 2.8],  # quality_brand
        [2.6, 3.6, 3.0, 3.5, 3.2, 3.8, 4.7],  # loyalty_partnership
    ]
)
PRICE = SEGMENTS.index("price_focused")
LOYALTY = SEGMENTS.index("loyalty_partnership")
IDX = {item: i for i, item in enumerate(NEEDS_ITEMS)}

CATEGORIES = (
    # name, class, median list price (EUR)
    ("Fasteners & consumables", "standard", 12.0),
    ("Standard components", "standard", 85.0),
    ("Spare parts", "standard", 140.0),
    ("Premium components", "premium", 420.0),
    ("Precision instruments", "premium", 1350.0),
    ("Installation & support services", "service", 950.0),
    ("Training", "service", 600.0),
)

COUNTRIES = (  # country, currency, EUR per unit, company-form suffix, weight
    ("SE", "SEK", 0.087, "AB", 0.42),
    ("FI", "EUR", 1.0, "Oy", 0.18),
    ("NO", "NOK", 0.085, "AS", 0.16),
    ("DK", "DKK", 0.134, "ApS", 0.14),
    ("DE", "EUR", 1.0, "GmbH", 0.06),
    ("GB", "GBP", 1.17, "Ltd", 0.04),
)

INDUSTRIES = (
    "Manufacturing",
    "Construction",
    "Public sector",
    "Healthcare",
    "Energy & utilities",
    "Logistics",
    "Retail & wholesale",
    "Life science",
)
# P(industry | segment): a weak firmographic signal, as in real life.
INDUSTRY_BY_SEGMENT = np.array(
    [
        [0.14, 0.22, 0.22, 0.06, 0.06, 0.10, 0.16, 0.04],
        [0.16, 0.08, 0.08, 0.20, 0.18, 0.18, 0.06, 0.06],
        [0.28, 0.08, 0.04, 0.10, 0.08, 0.06, 0.12, 0.24],
        [0.26, 0.10, 0.08, 0.12, 0.18, 0.10, 0.08, 0.08],
    ]
)

NAME_FIRST = (
    "Ångström",
    "Björk",
    "Åkesson",
    "Öhman",
    "Lindqvist",
    "Nordvik",
    "Sjöberg",
    "Hällström",
    "Fjäll",
    "Dahl",
    "Ek",
    "Strand",
    "Holm",
    "Berg",
    "Lund",
    "Sund",
    "Västkust",
    "Norrland",
    "Söder",
    "Östra",
    "Mälar",
    "Vänern",
    "Kärn",
    "Järn",
    "Stål",
    "Älv",
    "Skärgård",
    "Gränna",
    "Kalmar",
    "Härnö",
    "Tornio",
    "Jyväskylä",
    "Pohjola",
    "Tromsø",
    "Bergen",
    "Ålesund",
    "Århus",
    "Ødegaard",
    "Næstved",
    "Kjøge",
    "Møller",
    "Sørensen",
    "Lövgren",
    "Wärnström",
)
NAME_SECOND = (
    "Verktyg",
    "Maskin",
    "Bygg",
    "Teknik",
    "Logistik",
    "Elektro",
    "Industri",
    "Kraft",
    "Service",
    "Hydraulik",
    "Automation",
    "Miljö",
    "Transport",
    "Vård",
    "Energi",
    "Mekaniska",
    "Plåt",
    "Svets",
    "Laboratorier",
    "Fastigheter",
    "Kyl & Värme",
    "Instrument",
)
OWNERS = (
    "anna.lindqvist",
    "erik.sjoberg",
    "maria.holm",
    "johan.akesson",
    "sofia.nordvik",
    "lars.dahl",
    "karin.strand",
    "mikael.berg",
)
OWNER_DOMAIN = "needseg-demo.example"
ROLES = ("Purchasing manager", "Operations manager", "CEO", "Technical lead", "Finance")


DRIFT_SHAPES = ("gradual", "step")


@dataclass(frozen=True)
class WorldSpec:
    """What to generate. Same spec, same seed: byte-identical extracts.

    The defaults are the default demo world. The knobs below vary what real customer bases
    vary in (the evaluation suite, `pipelines/evaluate_suite.py`, turns them); every knob
    at its default leaves the generated files byte-for-byte as they were before it existed
    (a knob off its default may draw extra random numbers; at its default it draws none).

    Customer base:
    - `segment_weights`: relative size of each needs segment (SEGMENTS order), multiplying
      the odds of the size-dependent segment draw; None = the demo's mix (about 28 / 29 /
      22 / 21 %, which already depends on account size).
    - `separation`: how far apart the segments' needs prototypes are: each prototype is
      pulled towards (below 1) or pushed away from (above 1) the mean prototype; 1 = as is.
    - `size_lean`: per segment (SEGMENTS order), how strongly its share rises with the log
      of account size, i.e. where the key accounts (the top of the 80/20 curve) sit. The
      default puts big accounts in loyalty & partnership and quality, small ones in price;
      all zeros spreads key accounts evenly over the segments.
    - `needs_spread`: spread of accounts' needs around their segment's prototype.

    Surveys: `survey_share` (response rate: roughly the share of customers answering a
    wave), `survey_every_months` (cadence; 0 = no surveys), `response_style` (how
    differently respondents use the scale: a per-respondent shift), `survey_noise` (item
    noise in answers).

    Drift (planted drifters, `drifter_share` of customers):
    - `drift_target_weights`: None = the demo's rule (towards price; 35 % of loyalty &
      partnership drifters move away from partnership towards service). Otherwise relative
      weights of the segment a drifter moves towards (SEGMENTS order); a drifter never moves
      to its own segment, and accounts in a segment that is the only target do not drift.
    - `drift_months`: (shortest, longest) months from the start of a drift to its full move.
    - `drift_shape`: "gradual" (needs move linearly over the drift's months) or "step" (the
      whole move in the first month; the drift's months still set when churn follows).
    - `drift_spend_drop`: share of spend a fully drifted account no longer places (it buys
      elsewhere); 0 = only the needs signals move (mix, discounts, tickets, quotes, surveys).

    Orders: `seasonality` (amplitude of the yearly cycle in order counts, peak in June),
    `returns_rate` (base share of order lines that are returns).
    """

    seed: int = 42
    customers: int = 1500
    prospects: int = 150
    start_month: str = "2024-01"
    end_month: str = "2026-10"
    survey_every_months: int = 6
    survey_share: float = 0.16
    drifter_share: float = 0.07
    drift_churn_share: float = 0.6
    random_churn_share: float = 0.04
    promo_share: float = 0.10
    # Drifts start inside [drift_window_start, end - drift_min_visible] so that at least
    # that many months of each drift are in the extracts.
    drift_window_start: str = "2025-10"
    drift_min_visible: int = 6
    # How hard the world is: spread of accounts' needs around their segment's prototype,
    # item noise in survey answers, and how differently respondents use the scale.
    needs_spread: float = 0.42
    survey_noise: float = 0.5
    response_style: float = 0.45
    # The evaluation suite's knobs (see the docstring).
    segment_weights: tuple[float, ...] | None = None
    separation: float = 1.0
    size_lean: tuple[float, ...] = (-0.35, 0.0, 0.12, 0.45)
    drift_target_weights: tuple[float, ...] | None = None
    drift_months: tuple[int, int] = (4, 8)
    drift_shape: str = "gradual"
    drift_spend_drop: float = 0.45
    seasonality: float = 0.12
    returns_rate: float = 0.012

    def __post_init__(self) -> None:
        for name in ("segment_weights", "size_lean", "drift_target_weights"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != len(SEGMENTS) or (min(value) < 0 and name != "size_lean"):
                    raise ValueError(
                        f"WorldSpec.{name}: expected {len(SEGMENTS)} numbers (SEGMENTS order: {', '.join(SEGMENTS)}), got {value!r}"
                    )
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.segment_weights is not None and sum(self.segment_weights) <= 0:
            raise ValueError("WorldSpec.segment_weights: at least one weight must be above 0")
        if self.drift_target_weights is not None and sum(self.drift_target_weights) <= 0:
            raise ValueError("WorldSpec.drift_target_weights: at least one weight must be above 0")
        lo, hi = self.drift_months
        if not 1 <= lo <= hi:
            raise ValueError(
                f"WorldSpec.drift_months: expected (shortest, longest) with 1 <= shortest <= longest, got {self.drift_months!r}"
            )
        object.__setattr__(self, "drift_months", (int(lo), int(hi)))
        if self.drift_shape not in DRIFT_SHAPES:
            raise ValueError(f"WorldSpec.drift_shape: expected one of {', '.join(DRIFT_SHAPES)}, got {self.drift_shape!r}")
        if self.separation <= 0:
            raise ValueError(f"WorldSpec.separation: expected a number above 0, got {self.separation!r}")

    @property
    def months(self) -> list[pd.Period]:
        return list(pd.period_range(self.start_month, self.end_month, freq="M"))

    def as_json(self) -> dict:
        """The spec as world.json stores it (tuples as lists), for comparing with it."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> WorldSpec:
        """A spec from world.json (unknown keys refused, lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def prototypes(self) -> np.ndarray:
        """The segments' needs prototypes, pulled together or pushed apart by `separation`."""
        if self.separation == 1.0:
            return PROTOTYPES
        centre = PROTOTYPES.mean(axis=0)
        return np.clip(centre + self.separation * (PROTOTYPES - centre), 1.0, 5.0)


@dataclass
class WorldSummary:
    out: str
    spec: dict
    months: int
    accounts: int
    order_lines: int
    support_tickets: int
    quotes: int
    survey_responses: int
    drifters: int
    churners: int
    key_account_revenue_share: float
    files: int = 0
    truth_files: list[str] = field(default_factory=list)


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row of a probability matrix."""
    cum = probs.cumsum(axis=1)
    cum[:, -1] = 1.0
    return (rng.random(len(probs))[:, None] > cum).sum(axis=1)


def _company_names(rng: np.random.Generator, suffixes: list[str]) -> list[str]:
    names, seen = [], set()
    for suffix in suffixes:
        while True:
            first = NAME_FIRST[rng.integers(len(NAME_FIRST))]
            second = NAME_SECOND[rng.integers(len(NAME_SECOND))]
            style = rng.random()
            if style < 0.06:
                base = f"{first}, {second} & Co"
            elif style < 0.09:
                base = f'{first} "{second}"'
            elif style < 0.2:
                base = f"{first}s {second}"
            else:
                base = f"{first} {second}"
            name = f"{base} {suffix}"
            if name not in seen:
                break
            if rng.random() < 0.5:
                name = f"{base} {NAME_FIRST[rng.integers(len(NAME_FIRST))]} {suffix}"
                if name not in seen:
                    break
        seen.add(name)
        names.append(name)
    return names


class _World:
    """Latent state of every account; `generate` turns it into monthly extracts."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.months = spec.months
        self.n_months = len(self.months)
        self._accounts()
        self._drift_and_churn()

    # -- accounts ---------------------------------------------------------------------
    def _accounts(self) -> None:
        rng, spec = self.rng, self.spec
        n = spec.customers + spec.prospects
        self.n = n
        self.ids = np.array([f"A{i:05d}" for i in range(1, n + 1)])
        self.is_prospect = np.zeros(n, bool)
        self.is_prospect[spec.customers :] = True

        # Size: lognormal spend scale; sigma 1.7 gives roughly 80/20.
        self.size = np.exp(rng.normal(0.0, 1.7, n))
        log_size = np.log(self.size)
        # Big accounts lean towards partnership and quality; small ones towards price.
        lean = spec.size_lean
        logits = np.column_stack(
            [
                0.25 + lean[0] * log_size,
                np.zeros(n) if lean[1] == 0.0 else lean[1] * log_size,
                0.05 + lean[2] * log_size,
                0.0 + lean[3] * log_size,
            ]
        )
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        if spec.segment_weights is not None:
            probs = probs * np.array(spec.segment_weights)
            probs = probs / probs.sum(axis=1, keepdims=True)
        self.segment = _pick(rng, probs)
        # Individual needs: prototype plus a personal offset per item.
        self.z0 = np.clip(spec.prototypes[self.segment] + rng.normal(0, spec.needs_spread, (n, 7)), 1.0, 5.0)

        country_idx = _pick(rng, np.tile([c[4] for c in COUNTRIES], (n, 1)))
        self.country = np.array([COUNTRIES[i][0] for i in country_idx])
        self.currency = np.array([COUNTRIES[i][1] for i in country_idx])
        self.fx = np.array([COUNTRIES[i][2] for i in country_idx])
        self.names = _company_names(rng, [COUNTRIES[i][3] for i in country_idx])
        self.industry = np.array(INDUSTRIES)[_pick(rng, INDUSTRY_BY_SEGMENT[self.segment])]
        self.employees = np.maximum(3, np.round(np.exp(2.8 + 0.75 * log_size + rng.normal(0, 0.7, n)))).astype(int)
        self.annual_revenue = np.round(self.employees * np.exp(rng.normal(12.0, 0.5, n)), -3)

        # Tenure: partnership-minded accounts have been customers longer.
        start = self.months[0].to_timestamp()
        years = np.exp(1.1 + 0.35 * (self.z0[:, IDX["partnership"]] - 3) + rng.normal(0, 0.8, n))
        since = start - pd.to_timedelta(np.round(years * 365.25), unit="D")
        # 12 % of customers join during the first two years of the extracts.
        joiners = (~self.is_prospect) & (rng.random(n) < 0.12)
        join_offset = rng.integers(1, max(2, min(24, self.n_months - 6)), n)
        since = np.where(
            joiners,
            start + pd.to_timedelta(join_offset * 30.4 + rng.integers(0, 28, n), unit="D"),
            since,
        )
        self.customer_since = pd.to_datetime(since).normalize()
        self.join_month = np.array([max(0, (pd.Period(d, "M") - self.months[0]).n) for d in self.customer_since])

        # Owners: key-account managers (first three) own most of the largest accounts.
        big = log_size > np.quantile(log_size, 0.85)
        self.owner = np.where(
            big,
            np.array(OWNERS)[rng.integers(0, 3, n)],
            np.array(OWNERS)[rng.integers(0, len(OWNERS), n)],
        )
        self.parent = np.full(n, "", dtype=object)
        children = (~big) & (rng.random(n) < 0.05)
        parents = self.ids[big]
        self.parent[children] = parents[rng.integers(0, len(parents), children.sum())]

        # Some accounts answer surveys wave after wave, most never do; big ones more often.
        engagement = rng.beta(0.5, 2.0, n) * (1 + 0.5 * (log_size > 1.5))
        self.survey_propensity = np.clip(engagement * spec.survey_share / 0.2, 0, 0.95)

        # Behavioural dispositions that are personal, not needs: ordering rhythm, noise.
        self.rhythm = rng.normal(0, 0.35, n)
        self.discount_bias = rng.normal(0, 0.025, n)

    # -- drift, churn, promotions ------------------------------------------------------
    def _drift_and_churn(self) -> None:
        rng, spec, n, T = self.rng, self.spec, self.n, self.n_months
        customers = ~self.is_prospect
        window_start = self.months.index(pd.Period(spec.drift_window_start, "M"))
        window_end = T - spec.drift_min_visible
        if spec.drift_target_weights is None:
            can_drift = self.segment != PRICE
        else:  # an account drifts only if some other segment can be its target
            targets = np.array(spec.drift_target_weights) > 0
            can_drift = (targets.sum() - targets[self.segment]) > 0
        eligible = customers & can_drift & (self.join_month < max(window_start - 6, 1))
        n_drift = min(round(spec.drifter_share * customers.sum()), int(eligible.sum()))
        # Drift in needs is a change in an ongoing buying relationship: accounts that order
        # every few months or more often are likelier to be drifters than ones that buy
        # once or twice a year (whose needs no one could see move). How far and how fast
        # a drifter moves does not depend on its size.
        order_rate = np.clip(0.55 * self.size**0.45, 0.12, 25.0)
        weight = np.where(eligible, np.clip(order_rate - 0.3, 0.0, 3.0), 0.0)
        if (weight > 0).sum() < n_drift:
            weight = np.where(eligible, 1.0, 0.0)
        drifters = rng.choice(np.arange(n), size=n_drift, replace=False, p=weight / weight.sum())
        self.drifter = np.zeros(n, bool)
        self.drifter[drifters] = True
        self.drift_start = np.full(n, -1)
        self.drift_len = np.full(n, 0)
        self.drift_to = np.full(n, -1)
        self.drift_start[drifters] = rng.integers(window_start, max(window_end, window_start) + 1, n_drift)
        self.drift_len[drifters] = rng.integers(spec.drift_months[0], spec.drift_months[1] + 1, n_drift)
        if spec.drift_target_weights is None:
            # Most drift towards price; some partnership accounts drift away from partnership
            # towards a transactional service relationship.
            to = np.full(n_drift, PRICE)
            away = (self.segment[drifters] == LOYALTY) & (rng.random(n_drift) < 0.35)
            to[away] = SEGMENTS.index("service_focused")
        else:
            weights = np.tile(np.array(spec.drift_target_weights), (n_drift, 1))
            weights[np.arange(n_drift), self.segment[drifters]] = 0.0
            to = _pick(rng, weights / weights.sum(axis=1, keepdims=True))
        self.drift_to[drifters] = to
        target = spec.prototypes[self.drift_to[drifters]] + rng.normal(0, 0.3, (n_drift, 7))
        self.z_target = self.z0.copy()
        self.z_target[drifters] = np.clip(target, 1, 5)

        self.churn_month = np.full(n, -1)
        self.churn_kind = np.full(n, "", dtype=object)
        will_churn = drifters[rng.random(n_drift) < spec.drift_churn_share]
        churn_at = self.drift_start[will_churn] + self.drift_len[will_churn] + rng.integers(1, 4, len(will_churn))
        ok = churn_at < T
        self.churn_month[will_churn[ok]] = churn_at[ok]
        self.churn_kind[will_churn[ok]] = "after_drift"

        stable = customers & ~self.drifter & (self.join_month < max(window_start - 6, 1))
        n_random = min(round(spec.random_churn_share * customers.sum()), int(stable.sum()))
        randoms = rng.choice(np.flatnonzero(stable), size=n_random, replace=False)
        self.churn_month[randoms] = rng.integers(max(window_start - 3, 1), T, n_random)
        self.churn_kind[randoms] = "random"

        # Temporary promotions: 2-3 months of deep discounts that mean nothing about needs.
        self.promo_start = np.full(n, -1)
        promos = rng.choice(np.flatnonzero(customers & ~self.drifter), int(spec.promo_share * n), replace=False)
        self.promo_start[promos] = rng.integers(window_start - 4, T - 1, len(promos))
        self.promo_len = rng.integers(2, 4, n)

    def drift_weight(self, m: int) -> np.ndarray:
        """0 before a drift, rising linearly to 1 over its length (or at once, for a step
        drift), 1 after."""
        w = np.zeros(self.n)
        d = self.drifter
        if self.spec.drift_shape == "step":
            w[d] = (m >= self.drift_start[d]).astype(float)
        else:
            w[d] = np.clip((m - self.drift_start[d] + 1) / self.drift_len[d], 0.0, 1.0)
        return w

    def needs_at(self, m: int) -> np.ndarray:
        w = self.drift_weight(m)[:, None]
        return self.z0 + w * (self.z_target - self.z0)

    def segment_at(self, m: int) -> np.ndarray:
        seg = self.segment.copy()
        moved = self.drift_weight(m) >= 0.5
        seg[moved] = self.drift_to[moved]
        return seg

    def active(self, m: int) -> np.ndarray:
        churned = (self.churn_month >= 0) & (m >= self.churn_month)
        return (~self.is_prospect) & (self.join_month <= m) & ~churned


def _month_days(month: pd.Period) -> int:
    return month.days_in_month


def _timestamps(rng: np.random.Generator, month: pd.Period, count: int, business_hours: bool = True) -> pd.DatetimeIndex:
    start = month.to_timestamp()
    day = rng.integers(0, _month_days(month), count)
    seconds = rng.integers(7 * 3600, 18 * 3600, count) if business_hours else rng.integers(0, 86400, count)
    return pd.DatetimeIndex(start + pd.to_timedelta(day, unit="D") + pd.to_timedelta(seconds, unit="s"))


def _products(rng: np.random.Generator) -> pd.DataFrame:
    rows = [
        (f"P{ci + 1}{p:03d}", cat, cls, round(float(median * np.exp(rng.normal(0, 0.5))), 2))
        for ci, (cat, cls, median) in enumerate(CATEGORIES)
        for p in range(int(rng.integers(15, 40)))
    ]
    return pd.DataFrame(rows, columns=["product_id", "category", "cls", "list_price_eur"])


def generate(out: Path | str, spec: WorldSpec | None = None) -> WorldSummary:
    """Write the world's monthly extracts and its ground truth below `out` (replacing it)."""
    spec = spec or WorldSpec()
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "truth").mkdir(parents=True)
    world = _World(spec)
    rng = np.random.default_rng(spec.seed + 1)
    products = _products(rng)
    cls_of = products["cls"].to_numpy()
    by_cls = {c: np.flatnonzero(cls_of == c) for c in ("standard", "premium", "service")}
    counts = dict(order_lines=0, support_tickets=0, quotes=0, survey_responses=0, files=0)
    revenue_by_account = np.zeros(world.n)
    truth_monthly = []
    order_seq = ticket_seq = quote_seq = response_seq = 0
    carried = pd.DataFrame()  # tickets exported open, to be exported again once closed

    for m, month in enumerate(world.months):
        tag = str(month)
        z = world.needs_at(m)
        w = world.drift_weight(m)
        act = world.active(m)
        c = z - 3.0  # centred needs
        truth_monthly.append(
            pd.DataFrame(
                {
                    "account_id": world.ids,
                    "month": tag,
                    "segment": np.array(SEGMENTS)[world.segment_at(m)],
                    "drift_weight": np.round(w, 3),
                    "active": act,
                }
            )
        )
        files: dict[tuple[str, str], pd.DataFrame] = {}

        # Accounts: the first extract holds everyone known; later ones the changes.
        changed = np.zeros(world.n, bool)
        status = np.where(world.is_prospect, "prospect", "customer").astype(object)
        churned_now = (world.churn_month >= 0) & (m >= world.churn_month)
        status[churned_now] = "churned"
        if m == 0:
            changed = world.is_prospect | (world.join_month == 0)
        else:
            changed |= (~world.is_prospect) & (world.join_month == m)
            changed |= world.churn_month == m
            changed |= rng.random(world.n) < 0.01  # routine record edits
            changed &= world.is_prospect | (world.join_month <= m)
        if changed.any():
            idx = np.flatnonzero(changed)
            upd = _timestamps(rng, month, len(idx))
            files[("crm", "accounts")] = pd.DataFrame(
                {
                    "account_id": world.ids[idx],
                    "account_name": np.array(world.names, dtype=object)[idx],
                    "status": status[idx],
                    "industry": world.industry[idx],
                    "country": world.country[idx],
                    "employees": world.employees[idx],
                    "annual_revenue": world.annual_revenue[idx].astype(int),
                    "customer_since": np.where(world.is_prospect[idx], "", world.customer_since[idx].strftime("%Y-%m-%d")),
                    "account_owner": [f"{o}@{OWNER_DOMAIN}" for o in world.owner[idx]],
                    "parent_account_id": world.parent[idx],
                    "updated_at": upd.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )

        # Orders. Spend falls while an account drifts (it is buying elsewhere).
        promo = (world.promo_start >= 0) & (m >= world.promo_start) & (m < world.promo_start + world.promo_len)
        season = 1.0 + spec.seasonality * np.sin(2 * np.pi * (month.month - 3) / 12)
        lam = np.clip(0.55 * world.size**0.45, 0.12, 25.0) * season * (1.0 - spec.drift_spend_drop * w)
        regularity = np.exp(0.9 + 0.55 * c[:, IDX["partnership"]] - 0.35 * c[:, IDX["price"]] + world.rhythm)
        lam_m = lam * rng.gamma(regularity, 1.0 / regularity)
        n_orders = np.where(act, rng.poisson(lam_m), 0)
        acc_of_order = np.repeat(np.arange(world.n), n_orders)
        n_o = len(acc_of_order)
        if n_o:
            oc = c[acc_of_order]
            breadth = _logistic(-0.3 + 0.7 * oc[:, IDX["partnership"]] + 0.3 * np.log(world.size[acc_of_order]))
            n_lines = 1 + rng.poisson(0.8 + 3.0 * breadth)
            line_acc = np.repeat(acc_of_order, n_lines)
            line_order = np.repeat(np.arange(n_o), n_lines)
            lc = c[line_acc]
            n_l = len(line_acc)
            p_premium = _logistic(-1.6 + 0.8 * lc[:, IDX["quality"]] + 0.7 * lc[:, IDX["brand"]] - 0.35 * lc[:, IDX["price"]])
            p_service = _logistic(-2.3 + 0.75 * lc[:, IDX["service"]] + 0.35 * lc[:, IDX["reliability"]])
            u = rng.random(n_l)
            cls = np.where(u < p_service * 0.6, "service", np.where(rng.random(n_l) < p_premium, "premium", "standard"))
            prod = np.empty(n_l, int)
            for name, members in by_cls.items():
                sel = cls == name
                prod[sel] = members[rng.integers(0, len(members), sel.sum())]
            list_eur = products["list_price_eur"].to_numpy()[prod]
            size_discount = 0.018 * np.clip(np.log(world.size[line_acc]), 0, None)
            disc = (
                0.05
                + 0.045 * lc[:, IDX["price"]]
                - 0.012 * lc[:, IDX["brand"]]
                + size_discount
                + world.discount_bias[line_acc]
                + 0.10 * promo[line_acc]
                + rng.normal(0, 0.035, n_l)
            )
            # Quality-minded buyers often pay list price outright.
            pays_list = rng.random(n_l) < _logistic(
                -1.2 + 0.9 * lc[:, IDX["quality"]] + 0.6 * lc[:, IDX["brand"]] - 1.1 * lc[:, IDX["price"]]
            )
            disc = np.where(pays_list, 0.0, np.clip(disc, 0.0, 0.45))
            fx = world.fx[line_acc]
            list_local = np.round(list_eur / fx, 2)
            net_local = np.round(list_local * (1 - disc), 2)
            value_scale = world.size[line_acc] ** 0.55 / np.maximum(list_eur, 1) * 900
            qty = np.maximum(1, np.round(rng.gamma(1.5, np.clip(value_scale, 0.2, 400) / 1.5)))
            qty = np.where(cls == "service", np.maximum(1, np.round(qty / 5)), qty)
            returns = rng.random(n_l) < spec.returns_rate + 0.01 * (lc[:, IDX["quality"]] > 0.8)
            qty = np.where(returns, -np.maximum(1, np.round(qty / 3)), qty)
            order_ids = np.array([f"SO{order_seq + i + 1:07d}" for i in range(n_o)])
            order_seq += n_o
            order_dates = _timestamps(rng, month, n_o).normalize()
            line_number = np.concatenate([np.arange(1, k + 1) for k in n_lines])
            channel = np.where(rng.random(n_o) < 0.35 + 0.3 * _logistic(-oc[:, IDX["partnership"]]), "web", "sales rep")
            files[("crm", "order_lines")] = pd.DataFrame(
                {
                    "order_id": order_ids[line_order],
                    "line_number": line_number,
                    "account_id": world.ids[line_acc],
                    "order_date": order_dates[line_order].strftime("%Y-%m-%d"),
                    "product_id": products["product_id"].to_numpy()[prod],
                    "product_category": products["category"].to_numpy()[prod],
                    "quantity": qty.astype(int),
                    "list_price": list_local,
                    "net_price": net_local,
                    "currency": world.currency[line_acc],
                    "channel": channel[line_order],
                }
            )
            np.add.at(revenue_by_account, line_acc, qty * net_local * fx)
            counts["order_lines"] += n_l

        # Support tickets: service-minded accounts call more, and more critically.
        tickets = pd.DataFrame()
        if n_o:
            t_rate = np.clip(0.10 + 0.07 * oc[:, IDX["service"]] + 0.04 * oc[:, IDX["reliability"]] + 0.03 * oc[:, IDX["price"]], 0.02, 0.6)
            n_t = rng.poisson(t_rate)
            t_acc = np.repeat(acc_of_order, n_t)
            k = len(t_acc)
            if k:
                tc = c[t_acc]
                cat_logits = np.column_stack(
                    [
                        0.3 + 0.6 * tc[:, IDX["service"]],  # technical
                        -0.2 + 0.5 * tc[:, IDX["delivery"]],  # delivery
                        -0.6 + 0.6 * tc[:, IDX["quality"]],  # quality
                        np.full(k, -0.8),  # billing
                        -1.4 + 1.0 * tc[:, IDX["price"]] + 1.2 * promo[t_acc],  # price
                        np.full(k, -1.0),  # other
                    ]
                )
                cat = _pick(rng, np.exp(cat_logits) / np.exp(cat_logits).sum(axis=1, keepdims=True))
                p_crit = _logistic(-2.6 + 0.7 * tc[:, IDX["service"]] + 0.5 * tc[:, IDX["reliability"]])
                pr = np.where(rng.random(k) < p_crit, 3, _pick(rng, np.tile([0.25, 0.55, 0.20], (k, 1))))
                opened = _timestamps(rng, month, k, business_hours=False)
                closed = opened + pd.to_timedelta(rng.exponential(30, k) + 0.5, unit="h")
                tickets = pd.DataFrame(
                    {
                        "ticket_id": [f"T{ticket_seq + i + 1:07d}" for i in range(k)],
                        "account_id": world.ids[t_acc],
                        "opened_at": opened.strftime("%Y-%m-%d %H:%M:%S"),
                        "closed_at": closed.strftime("%Y-%m-%d %H:%M:%S"),
                        "priority": np.array(["low", "normal", "high", "critical"])[pr],
                        "category": np.array(["technical", "delivery", "quality", "billing", "price", "other"])[cat],
                    }
                )
                ticket_seq += k
                counts["support_tickets"] += k
        # A ticket still open at the end of the month is exported open, and again, closed,
        # in the next month's extract (staging keeps the latest version).
        month_end = (month + 1).to_timestamp().strftime("%Y-%m-%d %H:%M:%S")
        closing = carried[carried["closed_at"] < month_end] if len(carried) else carried
        still_open = carried[carried["closed_at"] >= month_end] if len(carried) else carried
        this_month = pd.concat([closing, tickets], ignore_index=True) if len(tickets) or len(closing) else tickets
        if len(this_month):
            open_now = this_month["closed_at"] >= month_end
            carried = pd.concat([still_open, this_month[open_now]], ignore_index=True)
            exported = this_month.assign(closed_at=np.where(open_now, "", this_month["closed_at"]))
            files[("crm", "support_tickets")] = exported
        else:
            carried = still_open

        # Quotes, for customers and prospects alike.
        can_quote = act | world.is_prospect
        q_rate = np.where(can_quote, np.clip(0.25 + 0.12 * np.log1p(world.size), 0.1, 1.5), 0.0)
        n_q = rng.poisson(q_rate)
        q_acc = np.repeat(np.arange(world.n), n_q)
        k = len(q_acc)
        if k:
            qc = c[q_acc]
            p_lost = _logistic(-0.9 + 0.55 * qc[:, IDX["price"]] + 0.6 * w[q_acc] + 0.6 * world.is_prospect[q_acc])
            created = _timestamps(rng, month, k)
            status_q = np.where(rng.random(k) < p_lost, "lost", "won")
            status_q = np.where((m == world.n_months - 1) & (rng.random(k) < 0.4), "open", status_q)
            reason_logits = np.column_stack(
                [
                    -0.2 + 1.3 * qc[:, IDX["price"]],
                    -0.8 + 0.7 * qc[:, IDX["quality"]],
                    -0.9 + 0.6 * qc[:, IDX["delivery"]],
                    -0.9 + 0.6 * qc[:, IDX["service"]],
                    np.full(k, -0.3),
                    np.full(k, -1.2),
                ]
            )
            reason = np.array(["price", "quality", "delivery", "service", "competitor", "other"])[
                _pick(rng, np.exp(reason_logits) / np.exp(reason_logits).sum(axis=1, keepdims=True))
            ]
            amount = np.round(world.size[q_acc] ** 0.5 * rng.lognormal(8.0, 0.7, k) / world.fx[q_acc], 2)
            files[("crm", "quotes")] = pd.DataFrame(
                {
                    "quote_id": [f"Q{quote_seq + i + 1:07d}" for i in range(k)],
                    "account_id": world.ids[q_acc],
                    "created_at": created.strftime("%Y-%m-%d %H:%M:%S"),
                    "amount": amount,
                    "currency": world.currency[q_acc],
                    "status": status_q,
                    "loss_reason": np.where(status_q == "lost", reason, ""),
                }
            )
            quote_seq += k
            counts["quotes"] += k

        # Survey wave: a share of current customers, one to three respondents each.
        if spec.survey_every_months and (m + 1) % spec.survey_every_months == 0:
            p_resp = np.where(act, world.survey_propensity, 0.0)
            responders = np.flatnonzero(rng.random(world.n) < p_resp)
            n_resp = 1 + rng.binomial(2, np.clip(0.15 + 0.1 * np.log1p(world.size[responders]), 0, 0.8))
            r_acc = np.repeat(responders, n_resp)
            k = len(r_acc)
            shift = rng.normal(0, spec.response_style, k)[:, None]  # acquiescence: everything a bit higher/lower
            spread = np.exp(rng.normal(0, 0.3, k))[:, None]  # some use the whole scale, some don't
            raw = 3.0 + spread * (z[r_acc] - 3.0) + shift + rng.normal(0, spec.survey_noise, (k, 7))
            answers = np.clip(np.round(raw), 1, 5)
            dont_know = rng.random((k, 7)) < 0.04
            sat = np.clip(np.round(4.0 - 1.8 * w[r_acc] + 0.3 * shift[:, 0] + rng.normal(0, 0.6, k)), 1, 5)
            nps = np.clip(np.round(7.5 - 4.5 * w[r_acc] + 1.2 * shift[:, 0] + rng.normal(0, 1.5, k)), 0, 10).astype(int)
            half = "h1" if month.month <= 6 else "h2"
            wave = f"{month.year}{half}"
            frame = pd.DataFrame(
                {
                    "response_id": [f"R{response_seq + i + 1:07d}" for i in range(k)],
                    "account_id": world.ids[r_acc],
                    "respondent_role": np.array(ROLES)[rng.integers(0, len(ROLES), k)],
                    "submitted_at": _timestamps(rng, month, k).strftime("%Y-%m-%d %H:%M:%S"),
                    "wave": wave,
                }
            )
            for j, item in enumerate(NEEDS_ITEMS):
                frame[item] = np.where(dont_know[:, j], "", answers[:, j].astype(int).astype(str))
            frame["satisfaction"] = sat.astype(int)
            frame["nps"] = nps
            files[("survey", "survey_responses")] = frame
            response_seq += k
            counts["survey_responses"] += k

        for (source, tbl), frame in files.items():
            folder = out / "extracts" / tag / source / tbl
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{tbl}_{tag}.csv" if tbl != "survey_responses" else f"wave_{frame['wave'].iloc[0]}.csv"
            frame.to_csv(folder / name, index=False, lineterminator="\n")
            counts["files"] += 1

    # Ground truth, never read by the pipeline.
    last = world.n_months - 1
    truth = pd.DataFrame(
        {
            "account_id": world.ids,
            "is_prospect": world.is_prospect,
            "base_segment": np.array(SEGMENTS)[world.segment],
            "final_segment": np.array(SEGMENTS)[world.segment_at(last)],
            "drifter": world.drifter,
            "drift_to": np.where(world.drifter, np.array(SEGMENTS)[np.maximum(world.drift_to, 0)], ""),
            "drift_start": [str(world.months[s]) if s >= 0 else "" for s in world.drift_start],
            "drift_full": [
                str(world.months[min(s + (d - 1 if spec.drift_shape == "gradual" else 0), last)]) if s >= 0 else ""
                for s, d in zip(world.drift_start, world.drift_len, strict=False)
            ],
            "churn_month": [str(world.months[c]) if c >= 0 else "" for c in world.churn_month],
            "churn_kind": world.churn_kind,
            "promo_start": [str(world.months[p]) if p >= 0 else "" for p in world.promo_start],
            "size": np.round(world.size, 4),
            **{f"need_{item}": np.round(world.z0[:, j], 3) for j, item in enumerate(NEEDS_ITEMS)},
        }
    )
    truth.to_csv(out / "truth" / "accounts.csv", index=False)
    pd.concat(truth_monthly).to_parquet(out / "truth" / "segments_monthly.parquet", index=False)

    rev = np.sort(revenue_by_account[~world.is_prospect])[::-1]
    top = rev[: max(1, int(0.2 * len(rev)))].sum() / max(rev.sum(), 1e-9)
    summary = WorldSummary(
        out=str(out),
        spec=asdict(spec),
        months=world.n_months,
        accounts=world.n,
        drifters=int(world.drifter.sum()),
        churners=int((world.churn_month >= 0).sum()),
        key_account_revenue_share=round(float(top), 3),
        truth_files=["truth/accounts.csv", "truth/segments_monthly.parquet"],
        **counts,
    )
    (out / "world.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def extract_months(world_dir: Path | str) -> list[str]:
    """The months a generated world has extracts for, oldest first."""
    return sorted(p.name for p in (Path(world_dir) / "extracts").iterdir() if p.is_dir())


def deliver(world_dir: Path | str, landing: Path | str, through_month: str) -> int:
    """Copy every extract up to and including `through_month` into the landing folder.

    This is how the demo lets time pass: files arrive month by month, as a CRM's export
    job would drop them. Files already delivered are left alone. Returns files copied.
    """
    world_dir, landing = Path(world_dir), Path(landing)
    copied = 0
    for month in extract_months(world_dir):
        if month > through_month:
            break
        for path in sorted((world_dir / "extracts" / month).rglob("*.*")):
            target = landing / path.relative_to(world_dir / "extracts" / month)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied += 1
    return copied
