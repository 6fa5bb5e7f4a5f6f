"""A large synthetic B2B company for the scale benchmark, written by DuckDB.

The demo world (pipelines/demo/world.py) is rich but builds every month in pandas; this
one trades detail for speed: every value is a SQL expression over a counter, so DuckDB
writes 90M order lines straight to CSV or Parquet in bounded memory on two cores. What it
keeps from the demo world (and from DESIGN.md's domain page):

- four latent needs segments; each account's needs vector around its segment's prototype
  drives discounts, paying list price, product mix, order rhythm, tickets, quotes, survey
  answers; heavy-tailed account sizes (the 80/20 rule), several currencies, prospects;
- about `lines_per_account` order lines per account over the history, returns included;
- survey waves every six months, one to three respondents per answering account;
- drifters whose price need rises and partnership need falls over the last months;
- one more month (`next/`) for the incremental cycle, with new accounts and record edits;
- the ground truth in `truth/` (never read by the pipeline), in the demo world's layout:
  `accounts.parquet` (each account's true segment and drift) and `segments_monthly.parquet`
  (each account's true segment as of the full and the incremental cycle), which
  `needseg bench --quality` scores the runs against.

Randomness is a hash of (seed, salt, counters): the same spec gives byte-identical files
whatever the number of threads. The landing layout is the input contract's:
`<out>/landing/<source>/<table>/<table>_<YYYY-MM>.<csv|parquet>` for the history and
`<out>/next/...` for the incremental month; `world.json` holds the spec and the counts.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from pipelines.demo.world import CATEGORIES, COUNTRIES, INDUSTRIES, NAME_FIRST, NAME_SECOND, PROTOTYPES, ROLES, SEGMENTS
from pipelines.warehouse import in_memory

NEEDS = ("price", "quality", "brand", "service", "delivery", "reliability", "partnership")
TWO_64 = "18446744073709551616.0"
# The generator's version, kept in world.json: a world written by another version is
# generated again rather than reused (2: draws hashed twice, the truth folder).
GENERATOR = 2


@dataclass(frozen=True)
class BenchSpec:
    """What to generate. Same spec: byte-identical files."""

    accounts: int = 10_000
    seed: int = 7
    months: int = 24  # history; one more month is written to next/ for the incremental cycle
    end_month: str = "2026-10"  # the last month of the history
    lines_per_account: float = 90.0
    file_format: str = "csv"  # csv | parquet
    prospect_share: float = 0.04
    new_account_share: float = 0.003  # accounts that first appear in the incremental month
    drifter_share: float = 0.05
    survey_share: float = 0.15
    products_per_category: int = 20

    @property
    def first_month(self) -> dt.date:
        end = dt.date.fromisoformat(self.end_month + "-01")
        total = end.year * 12 + end.month - 1 - (self.months - 1)
        return dt.date(total // 12, total % 12 + 1, 1)

    def month_start(self, m: int) -> dt.date:
        total = self.first_month.year * 12 + self.first_month.month - 1 + m
        return dt.date(total // 12, total % 12 + 1, 1)

    def month_end(self, m: int) -> dt.date:
        return self.month_start(m + 1) - dt.timedelta(days=1)

    @property
    def as_of(self) -> dt.date:
        """The as-of date of the full cycle: the last day of the history."""
        return self.month_end(self.months - 1)

    @property
    def next_as_of(self) -> dt.date:
        """The as-of date of the incremental cycle: the last day of the month in next/."""
        return self.month_end(self.months)


@dataclass
class BenchWorld:
    path: Path
    spec: BenchSpec
    rows: dict[str, int] = field(default_factory=dict)  # history rows per table
    next_rows: dict[str, int] = field(default_factory=dict)  # incremental month rows per table
    bytes: int = 0
    seconds: float = 0.0

    @property
    def landing(self) -> Path:
        return self.path / "landing"

    @property
    def next_month(self) -> Path:
        return self.path / "next"


# --- pseudo-random expressions ------------------------------------------------------------


class _Rand:
    """SQL for uniform and normal variates from a hash of the seed, a salt and counters."""

    def __init__(self, seed: int):
        self.seed = seed

    def u(self, salt: int, *keys: str) -> str:
        # Hashed twice: DuckDB combines the hashes of several arguments in a way that leaves
        # draws with neighbouring salts strongly correlated (0.6-0.98: every drifter had the
        # same drift start and segment); hashing the combined value mixes it fully.
        return f"(hash(hash({', '.join(keys)}, {self.seed}, {salt}))::double / {TWO_64})"

    def n(self, salt: int, *keys: str) -> str:
        """Standard normal (Box-Muller)."""
        return f"(sqrt(-2 * ln(greatest({self.u(salt, *keys)}, 1e-12))) * cos(2 * pi() * {self.u(salt + 7919, *keys)}))"


def _list(values) -> str:
    return "[" + ", ".join(f"'{v}'" if isinstance(v, str) else repr(float(v)) for v in values) + "]"


def _logistic(x: str) -> str:
    return f"(1 / (1 + exp(-({x}))))"


# --- the accounts -------------------------------------------------------------------------


def _accounts_sql(spec: BenchSpec, r: _Rand) -> str:
    """One row per account with its latent needs and every per-account rate."""
    protos = "[" + ", ".join(_list(row) for row in PROTOTYPES) + "]"
    countries = [c for c, *_ in COUNTRIES]
    currencies = [c[1] for c in COUNTRIES]
    rates = [c[2] for c in COUNTRIES]
    cum, acc = [], 0.0
    for c in COUNTRIES:
        acc += c[4]
        cum.append(acc)
    country_pick = " + ".join(f"({r.u(3, 'i')} > {x / acc})::int" for x in cum[:-1])
    needs = ",\n".join(f"{protos}[seg + 1][{j + 1}] + 0.42 * {r.n(10 + j, 'i')} as z_{item}" for j, item in enumerate(NEEDS))
    n_new = max(1, round(spec.accounts * spec.new_account_share))
    c = {item: f"(z_{item} - 3)" for item in NEEDS}
    return f"""
    create or replace table acc as
    with base as (
        select
            i,
            'A' || lpad(cast(i + 1 as varchar), 8, '0') as account_id,
            {r.u(1, "i")} < {spec.prospect_share} as is_prospect,
            case when i >= {spec.accounts - n_new} then {spec.months} else 0 end as join_month,
            cast(least(floor({r.u(2, "i")} * 4), 3) as integer) as seg,
            cast({country_pick} as integer) as country_index,
            exp(1.1 * {r.n(4, "i")}) as size,
            {r.u(5, "i")} < {spec.drifter_share} as drifter,
            {spec.months} - 1 - cast(floor({r.u(6, "i")} * 6) as integer) - 3 as drift_start,
            {r.n(8, "i")} as rhythm
        from range({spec.accounts}) as t(i)
    ),
    needs as (
        select *, {needs} from base
    )
    select
        *,
        {_list(countries)}[country_index + 1] as country,
        {_list(currencies)}[country_index + 1] as currency,
        {_list(rates)}[country_index + 1] as fx,
        least(greatest(0.55 * pow(size, 0.45), 0.12), 25.0) as lam,
        least(greatest(0.9 - 0.35 * {c["partnership"]} + 0.25 * {c["price"]} + 0.2 * rhythm, 0.15), 1.6) as sigma,
        {_logistic(f"-0.3 + 0.7 * {c['partnership']} + 0.3 * ln(size)")} as breadth,
        {_logistic(f"-1.6 + 0.8 * {c['quality']} + 0.7 * {c['brand']} - 0.35 * {c['price']}")} as p_premium,
        {_logistic(f"-2.3 + 0.75 * {c['service']} + 0.35 * {c['reliability']}")} as p_service,
        0.05 + 0.045 * {c["price"]} - 0.012 * {c["brand"]} + 0.018 * greatest(ln(size), 0) as disc_base,
        {_logistic(f"-1.2 + 0.9 * {c['quality']} + 0.6 * {c['brand']} - 1.1 * {c['price']}")} as p_list,
        0.35 + 0.3 * {_logistic(f"-{c['partnership']}")} as p_web,
        least(greatest(0.10 + 0.07 * {c["service"]} + 0.04 * {c["reliability"]} + 0.03 * {c["price"]}, 0.02), 0.6) as t_rate,
        {_logistic(f"-2.6 + 0.7 * {c['service']} + 0.5 * {c['reliability']}")} as p_crit,
        least(greatest(0.25 + 0.12 * ln(1 + size), 0.1), 1.5) as q_rate,
        least({spec.survey_share} * (0.7 + 0.3 * ln(1 + size)), 0.6) as survey_p
    from needs
    """


def _accounts_file_sql(spec: BenchSpec, r: _Rand, m: int) -> str:
    """The accounts extract of month m: everyone known at first, then new accounts and edits."""
    start = spec.month_start(m)
    days = (spec.month_end(m) - start).days + 1
    if m == 0:
        which = "join_month = 0"
    else:
        which = f"join_month = {m} or (join_month < {m} and {r.u(40, 'i', str(m))} < 0.01)"
    since = f"date '{spec.first_month}' - cast(floor(30 + {r.u(41, 'i')} * 3650) as integer)"
    return f"""
    select
        account_id,
        {_list(NAME_FIRST)}[1 + cast(floor({r.u(42, "i")} * {len(NAME_FIRST)}) as integer)] || ' '
            || {_list(NAME_SECOND)}[1 + cast(floor({r.u(43, "i")} * {len(NAME_SECOND)}) as integer)] || ' '
            || cast(i + 1 as varchar) as account_name,
        case when is_prospect then 'prospect' else 'customer' end as status,
        {_list(INDUSTRIES)}[1 + cast(floor({r.u(44, "i")} * {len(INDUSTRIES)}) as integer)] as industry,
        country,
        cast(round(5 + 40 * size) as bigint) as employees,
        cast(round(400000 * size * (0.5 + {r.u(45, "i")})) as bigint) as annual_revenue,
        case
            when is_prospect then null
            when join_month > 0 then date '{start}'
            else {since}
        end as customer_since,
        'owner' || cast(i % 250 as varchar) || '@needseg-bench.example' as account_owner,
        cast(null as varchar) as parent_account_id,
        timestamp '{start} 07:00:00' + to_seconds(cast(floor({r.u(46, "i", str(m))} * {days - 1} * 86400) as bigint))
            as updated_at
    from acc
    where {which}
    order by i
    """


# --- the monthly extracts -----------------------------------------------------------------


def _drift_weight_sql(m: int) -> str:
    """How far a drifter has moved in month m: 0 before its drift starts, 1 six months in."""
    return f"case when drifter then least(greatest(({m} - drift_start + 1) / 6.0, 0), 1) else 0 end"


def _month_frame_sql(spec: BenchSpec, r: _Rand, m: int) -> str:
    """Per active customer in month m: the drift weight and the number of orders."""
    dw = _drift_weight_sql(m)
    # calibrated: about lines_per_account order lines per account over the history
    scale = spec.lines_per_account / 90.0 * 3.6
    noise = f"exp(sigma * {r.n(20, 'i', str(m))} - sigma * sigma / 2)"
    season = f"(1 + 0.12 * sin(2 * pi() * ({spec.month_start(m).month} - 3) / 12))"
    return f"""
    create or replace temp table month_accounts as
    select
        *,
        dw,
        cast(floor({scale} * lam * {season} * (1 - 0.45 * dw) * {noise} + {r.u(21, "i", str(m))}) as integer) as n_orders
    from (select *, {dw} as dw from acc where not is_prospect and join_month <= {m})
    """


def _order_lines_sql(spec: BenchSpec, r: _Rand, m: int) -> str:
    start = spec.month_start(m)
    days = (spec.month_end(m) - start).days + 1
    medians = _list([c[2] for c in CATEGORIES])
    names = _list([c[0] for c in CATEGORIES])
    o = ("i", str(m), "o")
    k = ("i", str(m), "o", "l")
    disc = f"disc_base + 0.045 * 1.6 * dw + 0.035 * {r.n(30, *k)}"  # drifters bargain harder
    return f"""
    with orders as (
        select i, account_id, currency, fx, size, breadth, p_premium, p_service, disc_base, p_list, p_web, dw,
            unnest(range(n_orders)) as o
        from month_accounts
        where n_orders > 0
    ),
    lines as (
        select *,
            unnest(range(1 + cast(floor({r.u(31, *o)} * (1 + 3 * breadth)) as integer))) as l
        from orders
    ),
    drawn as (
        select *,
            case
                when {r.u(32, *k)} < p_service * 0.6 then 5 + cast(floor({r.u(33, *k)} * 2) as integer)
                when {r.u(34, *k)} < p_premium then 3 + cast(floor({r.u(33, *k)} * 2) as integer)
                else cast(least(floor({r.u(33, *k)} * 3), 2) as integer)
            end as cat,
            cast(floor({r.u(35, *k)} * {spec.products_per_category}) as integer) as product,
            {r.u(36, *k)} < p_list as pays_list,
            {r.u(37, *k)} < 0.015 as is_return
        from lines
    ),
    priced as (
        select *,
            {medians}[cat + 1] * exp(0.5 * {r.n(38, "cat", "product")}) as list_eur,
            case when pays_list then 0 else least(greatest({disc}, 0), 0.45) end as disc
        from drawn
    ),
    quantified as (
        select *,
            round(list_eur / fx, 2) as list_local,
            greatest(1, round(-ln(greatest({r.u(39, *k)}, 1e-9))
                * least(greatest(pow(size, 0.55) / greatest(list_eur, 1) * 900, 0.2), 400)
                / case when cat >= 5 then 5 else 1 end)) as qty
        from priced
    )
    select
        'SO' || {m:02d} || '-' || cast(i + 1 as varchar) || '-' || cast(o + 1 as varchar) as order_id,
        cast(l + 1 as bigint) as line_number,
        account_id,
        date '{start}' + cast(floor({r.u(50, *o)} * {days}) as integer) as order_date,
        'P' || cast(cat + 1 as varchar) || lpad(cast(product as varchar), 3, '0') as product_id,
        {names}[cat + 1] as product_category,
        cast(case when is_return then -greatest(1, round(qty / 3)) else qty end as bigint) as quantity,
        list_local as list_price,
        round(list_local * (1 - disc), 2) as net_price,
        currency,
        case when {r.u(51, *o)} < p_web then 'web' else 'sales rep' end as channel
    from quantified
    order by i, o, l
    """


def _pick_sql(u: str, logits: list[str], labels: list[str]) -> str:
    """A categorical draw with probabilities softmax(logits), by the cumulative sum."""
    exps = [f"exp({x})" for x in logits]
    total = " + ".join(exps)
    whens, running = [], []
    for exp_term, label in zip(exps[:-1], labels[:-1], strict=True):
        running.append(exp_term)
        whens.append(f"when {u} * ({total}) < {' + '.join(running)} then '{label}'")
    return "case " + " ".join(whens) + f" else '{labels[-1]}' end"


def _tickets_sql(spec: BenchSpec, r: _Rand, m: int) -> str:
    start = spec.month_start(m)
    days = (spec.month_end(m) - start).days + 1
    end = f"timestamp '{spec.month_start(m + 1)} 00:00:00' - interval 1 second"
    k = ("i", str(m), "t")
    c = {item: f"(z_{item} - 3)" for item in NEEDS}
    category = _pick_sql(
        r.u(60, *k),
        [
            f"0.3 + 0.6 * {c['service']}",
            f"-0.2 + 0.5 * {c['delivery']}",
            f"-0.6 + 0.6 * {c['quality']}",
            "-0.8",
            f"-1.4 + {c['price']} + 1.6 * dw",
            "-1.0",
        ],
        ["technical", "delivery", "quality", "billing", "price", "other"],
    )
    u_pr = r.u(62, *k)
    priority = (
        f"case when {r.u(61, *k)} < p_crit then 'critical' when {u_pr} < 0.25 then 'low' when {u_pr} < 0.8 then 'normal' else 'high' end"
    )
    opened = f"timestamp '{start} 00:00:00' + to_seconds(cast(floor({r.u(63, *k)} * {days} * 86400) as bigint))"
    return f"""
    with tickets as (
        select *, unnest(range(cast(floor(n_orders * t_rate + {r.u(64, "i", str(m))}) as integer))) as t
        from month_accounts
    ),
    opened as (
        select *, {opened} as opened_at from tickets
    )
    select
        'T' || {m:02d} || '-' || cast(i + 1 as varchar) || '-' || cast(t + 1 as varchar) as ticket_id,
        account_id,
        opened_at,
        least(opened_at + to_seconds(cast(1800 - ln(greatest({r.u(65, *k)}, 1e-9)) * 30 * 3600 as bigint)), {end}) as closed_at,
        {priority} as priority,
        {category} as category
    from opened
    order by i, t
    """


def _quotes_sql(spec: BenchSpec, r: _Rand, m: int) -> str:
    start = spec.month_start(m)
    days = (spec.month_end(m) - start).days + 1
    k = ("i", str(m), "q")
    c = {item: f"(z_{item} - 3)" for item in NEEDS}
    reason = _pick_sql(
        r.u(70, *k),
        [
            f"-0.2 + 1.3 * {c['price']}",
            f"-0.8 + 0.7 * {c['quality']}",
            f"-0.9 + 0.6 * {c['delivery']}",
            f"-0.9 + 0.6 * {c['service']}",
            "-0.3",
            "-1.2",
        ],
        ["price", "quality", "delivery", "service", "competitor", "other"],
    )
    p_lost = _logistic(f"-0.9 + 0.55 * {c['price']} + 0.6 * dw + 0.6 * is_prospect::int")
    still_open = f"{m} = {spec.months - 1} and {r.u(72, *k)} < 0.4" if m >= spec.months - 1 else "false"
    created = f"timestamp '{start} 08:00:00' + to_seconds(cast(floor({r.u(73, *k)} * ({days} * 86400 - 28800)) as bigint))"
    return f"""
    with quoting as (
        select a.*, coalesce(ma.dw, 0) as dw
        from acc as a
        left join month_accounts as ma on ma.i = a.i
        where a.join_month <= {m} and (a.is_prospect or ma.i is not null)
    ),
    quotes as (
        select *, unnest(range(cast(floor(q_rate + {r.u(74, "i", str(m))}) as integer))) as q
        from quoting
    ),
    decided as (
        select *,
            case when {still_open} then 'open' when {r.u(71, *k)} < {p_lost} then 'lost' else 'won' end as status
        from quotes
    )
    select
        'Q' || {m:02d} || '-' || cast(i + 1 as varchar) || '-' || cast(q + 1 as varchar) as quote_id,
        account_id,
        {created} as created_at,
        round(sqrt(size) * exp(8 + 0.7 * {r.n(75, *k)}) / fx, 2) as amount,
        currency,
        status,
        case when status = 'lost' then {reason} end as loss_reason
    from decided
    order by i, q
    """


def _survey_sql(spec: BenchSpec, r: _Rand, m: int) -> str:
    start = spec.month_start(m)
    days = (spec.month_end(m) - start).days + 1
    wave = f"{start.year}{'h1' if start.month <= 6 else 'h2'}"
    k = ("i", str(m), "s")
    shift = f"0.45 * {r.n(80, *k)}"
    moved = {"price": "z_price + 1.6 * dw", "partnership": "z_partnership - 1.2 * dw"}
    items = ",\n".join(
        f"case when {r.u(90 + j, *k)} < 0.04 then null else "
        f"cast(least(greatest(round(3 + spread * ({moved.get(item, 'z_' + item)} - 3) + shift + 0.5 * {r.n(100 + j, *k)}), 1), 5) "
        f"as bigint) end as {item}"
        for j, item in enumerate(NEEDS)
    )
    return f"""
    with answering as (
        select *, unnest(range(1 + cast(floor({r.u(81, "i", str(m))} * 2.3) as integer))) as s
        from month_accounts
        where {r.u(82, "i", str(m))} < survey_p
    ),
    styled as (
        select *, {shift} as shift, exp(0.3 * {r.n(83, *k)}) as spread from answering
    )
    select
        'R' || {m:02d} || '-' || cast(i + 1 as varchar) || '-' || cast(s + 1 as varchar) as response_id,
        account_id,
        {_list(ROLES)}[1 + cast(floor({r.u(84, *k)} * {len(ROLES)}) as integer)] as respondent_role,
        timestamp '{start} 09:00:00' + to_seconds(cast(floor({r.u(85, *k)} * ({days} - 1) * 86400) as bigint)) as submitted_at,
        '{wave}' as wave,
        {items},
        cast(least(greatest(round(4 - 1.8 * dw + 0.3 * shift + 0.6 * {r.n(86, *k)}), 1), 5) as bigint) as satisfaction,
        cast(least(greatest(round(7.5 - 4.5 * dw + 1.2 * shift + 1.5 * {r.n(87, *k)}), 0), 10) as bigint) as nps
    from styled
    order by i, s
    """


# --- the ground truth ---------------------------------------------------------------------

DRIFT_TO = "price_focused"  # the bench's drifters all move towards price (`moved` in _survey_sql)


def _truth_sql(spec: BenchSpec, m: int) -> str:
    """Each account's true segment in month m, as the demo world defines it: its own
    segment, or the one it drifts to once the drift is at least half way."""
    dw = _drift_weight_sql(m)
    return f"""
    select
        account_id,
        '{spec.month_start(m):%Y-%m}' as month,
        case when {dw} >= 0.5 then '{DRIFT_TO}' else {_list(SEGMENTS)}[seg + 1] end as segment,
        round({dw}, 3) as drift_weight,
        not is_prospect and join_month <= {m} as active
    from acc
    order by i
    """


def _write_truth(con: duckdb.DuckDBPyConnection, spec: BenchSpec, folder: Path) -> None:
    """truth/accounts.parquet and truth/segments_monthly.parquet from the `acc` table."""
    folder.mkdir(parents=True, exist_ok=True)
    months = [spec.month_start(m).strftime("%Y-%m") for m in range(spec.months + 1)]
    accounts = f"""
    select
        account_id,
        is_prospect,
        {_list(months)}[join_month + 1] as join_month,
        {_list(SEGMENTS)}[seg + 1] as base_segment,
        drifter,
        case when drifter then {_list(months)}[drift_start + 1] else '' end as drift_start,
        case when drifter then '{DRIFT_TO}' else '' end as drift_to
    from acc
    order by i
    """
    monthly = " union all ".join(f"({_truth_sql(spec, m)})" for m in (spec.months - 1, spec.months))
    _copy(con, accounts, folder / "accounts.parquet", "parquet")
    _copy(con, monthly, folder / "segments_monthly.parquet", "parquet")


def _limit(con: duckdb.DuckDBPyConnection, memory_limit: str, threads: int) -> None:
    """The generator's DuckDB: bounded memory and threads, no progress bar."""
    con.execute("set enable_progress_bar = false")
    con.execute(f"set memory_limit = '{memory_limit}'")
    con.execute(f"set threads = {threads}")


def ensure_truth(world: BenchWorld, *, memory_limit: str = "1GB", threads: int = 2) -> Path:
    """The world's truth folder, written first if the world predates it (the accounts are
    a hash of the spec, so they come out as when the world was generated)."""
    folder = world.path / "truth"
    if not (folder / "segments_monthly.parquet").exists():
        with in_memory() as con:
            _limit(con, memory_limit, threads)
            con.execute(_accounts_sql(world.spec, _Rand(world.spec.seed)))
            _write_truth(con, world.spec, folder)
    return folder


# --- writing ------------------------------------------------------------------------------


def _copy(con: duckdb.DuckDBPyConnection, query: str, target: Path, file_format: str) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    options = "format parquet, compression zstd" if file_format == "parquet" else "format csv, header true"
    building = target.with_name(f".{target.name}.building")
    rows = con.execute(f"copy ({query}) to '{building}' ({options})").fetchone()[0]
    if rows:
        building.replace(target)
    else:  # a month without survey wave or tickets: no file, as a real export job would do
        building.unlink(missing_ok=True)
    return int(rows)


def _write_month(con: duckdb.DuckDBPyConnection, spec: BenchSpec, r: _Rand, m: int, folder: Path) -> dict[str, int]:
    tag = spec.month_start(m).strftime("%Y-%m")
    ext = spec.file_format
    rows: dict[str, int] = {}
    account_rows = _copy(con, _accounts_file_sql(spec, r, m), folder / "crm" / "accounts" / f"accounts_{tag}.{ext}", ext)
    rows["accounts"] = account_rows
    con.execute(_month_frame_sql(spec, r, m))
    queries = {
        ("crm", "order_lines"): _order_lines_sql,
        ("crm", "support_tickets"): _tickets_sql,
        ("crm", "quotes"): _quotes_sql,
    }
    if (m + 1) % 6 == 0:
        queries[("survey", "survey_responses")] = _survey_sql
    for (source, table), sql in queries.items():
        rows[table] = _copy(con, sql(spec, r, m), folder / source / table / f"{table}_{tag}.{ext}", ext)
    return rows


def generate(
    out: Path | str,
    spec: BenchSpec,
    *,
    memory_limit: str = "1GB",
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
) -> BenchWorld:
    """Write the world below `out` (replacing it); reuse it if `out` already holds this spec."""
    out = Path(out)
    meta = out / "world.json"
    if meta.exists():
        known = json.loads(meta.read_text())
        if known.get("spec") == asdict(spec) and known.get("generator") == GENERATOR:
            return BenchWorld(out, spec, known["rows"], known["next_rows"], known["bytes"], known["seconds"])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.monotonic()
    world = BenchWorld(out, spec)
    r = _Rand(spec.seed)
    with in_memory() as con:
        _limit(con, memory_limit, threads)
        con.execute(f"set temp_directory = '{out / '.tmp'}'")
        con.execute(_accounts_sql(spec, r))
        _write_truth(con, spec, out / "truth")
        last_note = time.monotonic()
        for m in range(spec.months + 1):
            rows = _write_month(con, spec, r, m, world.landing if m < spec.months else world.next_month)
            totals = world.rows if m < spec.months else world.next_rows
            for table, n in rows.items():
                totals[table] = totals.get(table, 0) + n
            if progress and (time.monotonic() - last_note >= 10 or m == spec.months):
                last_note = time.monotonic()
                progress(
                    f"generate: month {m + 1}/{spec.months + 1}, {world.rows.get('order_lines', 0):,} order lines, "
                    f"{time.monotonic() - started:.0f} s"
                )
        shutil.rmtree(out / ".tmp", ignore_errors=True)
    world.bytes = sum(p.stat().st_size for folder in (world.landing, world.next_month) for p in folder.rglob("*") if p.is_file())
    world.seconds = round(time.monotonic() - started, 1)
    meta.write_text(
        json.dumps(
            {
                "generator": GENERATOR,
                "spec": asdict(spec),
                "rows": world.rows,
                "next_rows": world.next_rows,
                "bytes": world.bytes,
                "seconds": world.seconds,
            },
            indent=2,
        )
    )
    return world
