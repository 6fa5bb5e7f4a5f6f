"""The floors needseg is compared with, on the same landing files.

- DuckDB's scan: count the order lines and sum their value straight from the files;
- DuckDB's per-account aggregate of the same needs proxies needseg's features carry
  (revenue, orders, discount depth, list-price share, premium and service shares, returns,
  categories, web share; tickets, critical tickets; quotes lost on price);
- a plain pandas + scikit-learn script: read the files, the same aggregates with groupby,
  StandardScaler, KMeans. It runs in a child process (`python -m pipelines.bench.floors`)
  so its memory is measured on its own and given back.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


from pipelines.demo.world import CATEGORIES
from pipelines.warehouse import in_memory


@dataclass
class Measured:
    name: str
    wall: float
    cpu: float
    peak_rss: int  # bytes
    rows: int
    note: str = ""


def _files(landing: Path, source: str, table: str, file_format: str) -> str:
    return str(landing / source / table / f"*.{file_format}")


def _reader(landing: Path, source: str, table: str, file_format: str) -> str:
    path = _files(landing, source, table, file_format)
    return f"read_parquet('{path}')" if file_format == "parquet" else f"read_csv('{path}', header = true)"


def _fx_values(fx_rates: dict[str, float]) -> str:
    return "(values " + ", ".join(f"('{k}', {float(v)})" for k, v in fx_rates.items()) + ") as fx(currency, rate)"


def duckdb_scan_sql(landing: Path, file_format: str) -> str:
    return f"select count(*), sum(quantity * net_price) from {_reader(landing, 'crm', 'order_lines', file_format)}"


def duckdb_features_sql(landing: Path, file_format: str, as_of: dt.date, fx_rates: dict[str, float]) -> str:
    premium = ", ".join(f"'{name}'" for name, cls, _ in CATEGORIES if cls == "premium")
    service = ", ".join(f"'{name}'" for name, cls, _ in CATEGORIES if cls == "service")
    since = f"date '{as_of}' + interval 1 day - interval 12 month"
    lines = _reader(landing, "crm", "order_lines", file_format)
    tickets = _reader(landing, "crm", "support_tickets", file_format)
    quotes = _reader(landing, "crm", "quotes", file_format)
    return f"""
    with lines as (
        select l.account_id, l.order_id, l.product_category, l.channel, l.quantity < 0 as is_return,
            l.quantity * l.net_price * fx.rate as revenue, l.quantity * l.list_price * fx.rate as list_revenue,
            greatest(1 - l.net_price / nullif(l.list_price, 0), 0) as discount
        from {lines} as l join {_fx_values(fx_rates)} on fx.currency = l.currency
        where l.order_date > {since} and l.order_date <= date '{as_of}'
    ),
    orders as (
        select account_id,
            sum(revenue) as revenue_12m,
            count(distinct order_id) as orders_12m,
            sum(discount * list_revenue) filter (where not is_return) / nullif(sum(list_revenue) filter (where not is_return), 0)
                as discount_depth_12m,
            sum(revenue) filter (where not is_return and discount <= 0.005) / nullif(sum(revenue) filter (where not is_return), 0)
                as list_price_share_12m,
            sum(revenue) filter (where product_category in ({premium}) and not is_return)
                / nullif(sum(revenue) filter (where not is_return), 0) as premium_share_12m,
            sum(revenue) filter (where product_category in ({service}) and not is_return)
                / nullif(sum(revenue) filter (where not is_return), 0) as service_share_12m,
            -sum(revenue) filter (where is_return) / nullif(sum(revenue) filter (where not is_return), 0) as return_share_12m,
            count(distinct product_category) as categories_12m,
            count(distinct order_id) filter (where channel = 'web') / count(distinct order_id) as web_order_share_12m
        from lines group by account_id
    ),
    tickets as (
        select account_id, count(*) as tickets_12m, count(*) filter (where priority = 'critical') as critical_tickets_12m
        from {tickets} where opened_at > {since} and opened_at < date '{as_of}' + interval 1 day group by account_id
    ),
    quotes as (
        select account_id, count(*) filter (where status = 'lost' and loss_reason = 'price') as quotes_lost_on_price_12m
        from {quotes} where created_at > {since} and created_at < date '{as_of}' + interval 1 day group by account_id
    )
    select count(*), sum(o.revenue_12m), avg(o.discount_depth_12m), sum(t.tickets_12m), sum(q.quotes_lost_on_price_12m)
    from orders as o
    left join tickets as t using (account_id)
    left join quotes as q using (account_id)
    """


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Start measuring the peak resident set afresh (Linux; elsewhere the process's peak stays)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    return _peak_rss()


def run_duckdb(name: str, sql: str, rows: int, threads: int | None = None) -> Measured:
    """A query on a fresh in-memory DuckDB, measured in this process."""
    reset_peak_rss()
    cpu, wall = time.process_time(), time.monotonic()
    with in_memory() as con:
        con.execute("set enable_progress_bar = false")
        if threads:
            con.execute(f"set threads = {threads}")
        con.execute(sql).fetchall()
    return Measured(name, time.monotonic() - wall, time.process_time() - cpu, _peak_rss(), rows)


def run_peer(landing: Path, file_format: str, as_of: dt.date, fx_rates: dict[str, float], rows: int, clusters: int = 4) -> Measured:
    """The pandas + scikit-learn script in a child process: its wall, CPU and peak memory."""
    rates = ",".join(f"{k}={v}" for k, v in fx_rates.items())
    args = [sys.executable, "-m", "pipelines.bench.floors", str(landing), file_format, as_of.isoformat(), rates, str(clusters)]
    wall = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        printed, problems = out.read().strip(), err.read().strip()
    lines = printed.splitlines()
    ok = proc.returncode == 0 and len(lines) >= 2
    # The child's own high-water mark: ru_maxrss of a spawned child can carry the parent's.
    peak = int(lines[-1]) if ok else usage.ru_maxrss * 1024
    note = lines[-2] if ok else f"failed: {problems[-300:]}"
    return Measured("pandas + scikit-learn peer", time.monotonic() - wall, usage.ru_utime + usage.ru_stime, peak, rows, note)


def peer(landing: Path, file_format: str, as_of: dt.date, fx_rates: dict[str, float], clusters: int) -> str:
    """What a data scientist would write: pandas reads, groupby aggregates, scikit-learn clusters."""
    import numpy as np
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    def read(source: str, table: str, columns: list[str]) -> pd.DataFrame:
        files = sorted((landing / source / table).glob(f"*.{file_format}"))
        if file_format == "parquet":
            return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)
        return pd.concat([pd.read_csv(f, usecols=columns) for f in files], ignore_index=True)

    start = pd.Timestamp(as_of) + pd.Timedelta(days=1) - pd.DateOffset(months=12)
    end = pd.Timestamp(as_of) + pd.Timedelta(days=1)
    cols = ["order_id", "account_id", "order_date", "product_category", "quantity", "list_price", "net_price", "currency", "channel"]
    lines = read("crm", "order_lines", cols)
    lines["order_date"] = pd.to_datetime(lines["order_date"])
    lines = lines[(lines["order_date"] >= start) & (lines["order_date"] < end)]
    rate = lines["currency"].map(fx_rates)
    lines = lines.assign(
        revenue=lines["quantity"] * lines["net_price"] * rate,
        list_revenue=lines["quantity"] * lines["list_price"] * rate,
        discount=(1 - lines["net_price"] / lines["list_price"]).clip(lower=0),
        is_return=lines["quantity"] < 0,
    )
    bought = lines[~lines["is_return"]].assign(weighted=lambda f: f["discount"] * f["list_revenue"])
    premium = {name for name, cls, _ in CATEGORIES if cls == "premium"}
    service = {name for name, cls, _ in CATEGORIES if cls == "service"}
    bought = bought.assign(
        premium=bought["revenue"].where(bought["product_category"].isin(premium), 0.0),
        service=bought["revenue"].where(bought["product_category"].isin(service), 0.0),
        at_list=bought["revenue"].where(bought["discount"] <= 0.005, 0.0),
    )
    g = bought.groupby("account_id")
    sums = g[["revenue", "list_revenue", "weighted", "premium", "service", "at_list"]].sum()
    features = pd.DataFrame(
        {
            "revenue_12m": lines.groupby("account_id")["revenue"].sum(),
            "orders_12m": lines.groupby("account_id")["order_id"].nunique(),
            "discount_depth_12m": sums["weighted"] / sums["list_revenue"],
            "list_price_share_12m": sums["at_list"] / sums["revenue"],
            "premium_share_12m": sums["premium"] / sums["revenue"],
            "service_share_12m": sums["service"] / sums["revenue"],
            "categories_12m": g["product_category"].nunique(),
            "web_order_share_12m": lines[lines["channel"] == "web"].groupby("account_id")["order_id"].nunique()
            / lines.groupby("account_id")["order_id"].nunique(),
        }
    )
    tickets = read("crm", "support_tickets", ["account_id", "opened_at", "priority"])
    tickets["opened_at"] = pd.to_datetime(tickets["opened_at"])
    tickets = tickets[(tickets["opened_at"] >= start) & (tickets["opened_at"] < end)]
    features["tickets_12m"] = tickets.groupby("account_id").size()
    features["critical_tickets_12m"] = tickets[tickets["priority"] == "critical"].groupby("account_id").size()
    quotes = read("crm", "quotes", ["account_id", "created_at", "status", "loss_reason"])
    quotes["created_at"] = pd.to_datetime(quotes["created_at"])
    quotes = quotes[(quotes["created_at"] >= start) & (quotes["created_at"] < end)]
    lost = quotes[(quotes["status"] == "lost") & (quotes["loss_reason"] == "price")]
    features["quotes_lost_on_price_12m"] = lost.groupby("account_id").size()
    features = features.replace([np.inf, -np.inf], np.nan).fillna(0.0)
    x = StandardScaler().fit_transform(features.to_numpy())
    labels = KMeans(n_clusters=clusters, n_init=1, random_state=0).fit_predict(x)
    return f"{len(features)} accounts, {features.shape[1]} features, cluster sizes {sorted(np.bincount(labels).tolist())}"


if __name__ == "__main__":
    landing_arg, format_arg, as_of_arg, rates_arg, clusters_arg = sys.argv[1:6]
    rates_given = {k: float(v) for k, v in (pair.split("=") for pair in rates_arg.split(","))}
    print(peer(Path(landing_arg), format_arg, dt.date.fromisoformat(as_of_arg), rates_given, int(clusters_arg)))
    print(peak_rss())
