"""The segment report: one self-contained HTML page per publication for analysts and
account teams, read from the published serving database (never the working warehouse).

What the latest run found: the segments with their size (surveyed and inferred), key
accounts, stability and playbook; what each segment needs (a heat map over the needs
dimensions) and how it buys (the behaviour indices that set it apart); how segment sizes
moved over the runs; who moved where since the previous run; the population events; and
the open churn-risk alerts grouped by account owner, long evidence folded away. Charts are
matplotlib figures inlined as SVG (pipelines/report_charts.py), with no script and nothing
fetched from the network, so the page opens offline and can be mailed as a file; names
and labels are in words, never column names. The page is written to a new file and
renamed over the old one, like the serving database.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from pipelines import clock
from pipelines import report_charts as charts
from pipelines.churn.run import QUALITY_SQL, quality_summary
from pipelines.errors import NeedsegError
from pipelines.files import write_file_atomically
from pipelines.settings import Settings
from pipelines.warehouse import open_serving

REPORT_NAME = "segment_report.html"
PALETTE = charts.PALETTE
EVIDENCE_SHOWN = 1  # evidence lines shown per alert; the rest fold away
TOP_BEHAVIOURS = 8


def report_path(settings: Settings) -> Path:
    return settings.report_dir / REPORT_NAME


@dataclass
class ReportResult:
    path: str
    run_id: str
    as_of: str
    segments: int
    open_alerts: int

    def summary(self) -> str:
        return f"segment report for run {self.run_id}: {self.path}"


def _e(value: object) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value))


def _pct(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.0%}"


def _cell(value: object) -> str:
    """A table cell: lists (evidence, segment lists) as bullet points, the first
    EVIDENCE_SHOWN shown and the rest folded into a <details>."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, list | tuple):
        items = [v for v in value if v not in (None, "")]
        if len(items) <= 1:
            return _e(items[0] if items else "")
        shown = "".join(f"<li>{_e(v)}</li>" for v in items[:EVIDENCE_SHOWN])
        rest = "".join(f"<li>{_e(v)}</li>" for v in items[EVIDENCE_SHOWN:])
        return f"<ul>{shown}</ul><details><summary>{len(items) - EVIDENCE_SHOWN} more</summary><ul>{rest}</ul></details>"
    if isinstance(value, str) and value in ("{}", "[]"):
        return ""
    return _e(value)


def _table(frame: pd.DataFrame, columns: dict[str, str], numeric: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th{' class=num' if c in numeric else ''}>{_e(label)}</th>" for c, label in columns.items())
    records = frame[list(columns)].to_dict("records")
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if c in numeric else ''}>{_cell(row[c])}</td>" for c in columns) + "</tr>" for row in records
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    return con.execute(sql, params or []).df()


def _segment_names(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Segment id -> name, over every run (a segment that disappeared keeps its name)."""
    frame = _read(con, "select distinct segment_id, segment from segment_history")
    latest = _read(con, "select distinct segment_id, segment from segments")
    return {
        **dict(zip(frame["segment_id"], frame["segment"], strict=True)),
        **dict(zip(latest["segment_id"], latest["segment"], strict=True)),
    }


def _names(value: object, names: dict[str, str]) -> str:
    """A list of segment ids (JSON or comma-separated) as their names."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if hasattr(value, "tolist") and not isinstance(value, str):
        ids = value.tolist()
    else:
        text = str(value).strip()
        try:
            ids = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        except ValueError:
            ids = [text]
    return ", ".join(names.get(str(i), str(i)) for i in ids)


def _run_section(run: pd.Series, run_id: str, as_of: dt.date) -> str:
    k_evidence = json.loads(run["k_evidence"]) if isinstance(run["k_evidence"], str) and run["k_evidence"] else []
    evidence = pd.DataFrame(k_evidence)
    folded = ""
    if not evidence.empty:
        table = _table(evidence, {c: charts.humanise(c) for c in evidence.columns})
        folded = f"<details><summary>How k was chosen (every k tried)</summary>{table}</details>"
    return f"""<section><h2>The run</h2>
<p>Run <b>{_e(run_id)}</b> as of <b>{as_of}</b>, taxonomy <b>{_e(run["taxonomy"])}</b> (basis: {_e(run["basis"])}).
{int(run["customers"])} customers: {int(run["surveyed"])} surveyed, {int(run["inferred"])} inferred from behaviour
(classifier cross-validated accuracy {_pct(run["classifier_cv_accuracy"])}); {int(run["key_accounts"])} key accounts
(80/20 tier, {_e(run["key_account_mode"])}); {int(run["prospects"])} prospects with a predicted segment.</p>
<p>{_e(run["k_reason"])}. Every segment's bootstrap Jaccard ≥ {run["min_jaccard"]:.2f}; silhouette {run["silhouette"]:.2f}.</p>
{_verdict(run)}{folded}</section>"""


def _verdict(run: pd.Series) -> str:
    """The run's verdict and its reasons, in words (segment_runs.verdict, verdict_reasons)."""
    verdict = run.get("verdict")
    if not isinstance(verdict, str):
        return ""
    reasons = json.loads(run["verdict_reasons"]) if isinstance(run.get("verdict_reasons"), str) else []
    items = "".join(f"<li>{_e(r['text'])}</li>" for r in reasons)
    return f"<p>Verdict: <b>{_e(verdict)}</b></p>" + (f"<ul>{items}</ul>" if items else "")


def _segments_section(segments: pd.DataFrame, colours: dict[str, str]) -> str:
    table = segments.assign(stability=segments["stability_jaccard"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"))
    bars = charts.size_bars(list(segments["segment"]), list(segments["surveyed"]), list(segments["inferred"]), colours)
    columns = {
        "segment": "Segment",
        "customers": "Customers",
        "surveyed": "Surveyed",
        "inferred": "Inferred",
        "key_accounts": "Key accounts",
        "stability": "Stability (Jaccard)",
        "offer": "Offer",
        "action": "Next action",
    }
    numeric = ("customers", "surveyed", "inferred", "key_accounts", "stability")
    return f"<section><h2>Segments</h2>{bars}{_table(table, columns, numeric)}</section>"


def _profile_sections(con: duckdb.DuckDBPyConnection, order: list[str]) -> str:
    profiles = _read(
        con,
        """
        select segment, dimension, kind, segment_value, index_vs_overall from segment_profiles
        qualify row_number() over (partition by segment_id, dimension, kind order by population = 'all' desc) = 1
        """,
    )
    parts = []
    needs = profiles[profiles["kind"] == "need"]
    if not needs.empty:
        values = {(r.segment, r.dimension): r.segment_value for r in needs.itertuples()}
        chart = charts.heatmap(
            order, list(dict.fromkeys(needs["dimension"])), values, "+.2f", "needs per segment", "importance vs the average respondent"
        )
        parts.append(
            "<div><h3>What each segment needs</h3><p>Survey importance per needs dimension, normalised per respondent "
            "(above 0: more important to this segment than to the average respondent).</p>" + chart + "</div>"
        )
    behaviour = profiles[profiles["kind"] == "behaviour"]
    if not behaviour.empty:
        # The behaviours that set segments apart most, not all of them.
        spread = behaviour.groupby("dimension")["index_vs_overall"].agg(lambda v: v.abs().max()).sort_values(ascending=False)
        values = {(r.segment, r.dimension): r.index_vs_overall for r in behaviour.itertuples()}
        chart = charts.heatmap(
            order, list(spread.index[:TOP_BEHAVIOURS]), values, "+.2f", "behaviour per segment", "relative to everyone (0 = same)"
        )
        parts.append(
            "<div><h3>How each segment buys</h3><p>The behaviours that set segments apart most: the segment's value against "
            "everyone's, as a relative index (0 = same as everyone, +0.5 = 50 % higher).</p>" + chart + "</div>"
        )
    return f"<section><h2>Needs and behaviour</h2>{''.join(parts)}</section>" if parts else ""


def _history_chart(con: duckdb.DuckDBPyConnection, order: list[str], colours: dict[str, str]) -> str:
    history = _read(
        con,
        """
        select r.as_of, h.segment, count(*) as customers
        from segment_runs r join segment_history h
          on h.valid_from <= r.as_of and (h.valid_to is null or h.valid_to > r.as_of)
        group by all order by r.as_of
        """,
    )
    runs = sorted(history["as_of"].unique())
    if len(runs) < 2:
        return "<div><h3>Segment sizes over the runs</h3><p>Only one run so far: sizes over time appear from the second run on.</p></div>"
    wide = history.pivot_table(index="as_of", columns="segment", values="customers", fill_value=0).reindex(runs, fill_value=0)
    segments = [s for s in order if s in wide.columns] + [s for s in wide.columns if s not in order]
    by_segment = {s: [int(v) for v in wide[s]] for s in segments}
    return "<div><h3>Segment sizes over the runs</h3>" + charts.size_lines(runs, by_segment, colours) + "</div>"


def _movement_section(con: duckdb.DuckDBPyConnection, run_id: str, order: list[str], colours: dict[str, str]) -> str:
    parts = [_history_chart(con, order, colours)]
    transitions = _read(
        con, "select from_segment, to_segment, accounts, previous_run_id from segment_transitions where run_id = ?", [run_id]
    )
    if not transitions.empty:
        rows = list(dict.fromkeys([*[o for o in order if o in set(transitions["from_segment"])], *transitions["from_segment"]]))
        cols = list(dict.fromkeys([*[o for o in order if o in set(transitions["to_segment"])], *transitions["to_segment"]]))
        moves = {(r.from_segment, r.to_segment): int(r.accounts) for r in transitions.itertuples()}
        moved = int(transitions.loc[transitions["from_segment"] != transitions["to_segment"], "accounts"].sum())
        parts.append(
            f"<div><h3>Who moved since the previous run</h3><p>{moved} customers changed segment since run "
            f"{_e(transitions['previous_run_id'].iloc[0])}: moves in orange (darker: more customers), "
            "customers who stayed in grey.</p>" + charts.transitions(rows, cols, moves) + "</div>"
        )
    return f"<section><h2>Movement</h2>{''.join(parts)}</section>"


def _population_section(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    events = _read(
        con,
        "select event, from_segments, to_segments, size_before, size_after, overlap from segment_population_changes where run_id = ? order by event",
        [run_id],
    )
    if events.empty:
        return ""
    names = _segment_names(con)
    events["from_names"] = events["from_segments"].map(lambda v: _names(v, names))
    events["to_names"] = events["to_segments"].map(lambda v: _names(v, names))
    events["overlap_pct"] = events["overlap"].map(_pct)
    columns = {
        "event": "Event",
        "from_names": "Before",
        "to_names": "Now",
        "size_before": "Customers before",
        "size_after": "Customers now",
        "overlap_pct": "Customers kept",
    }
    table = _table(events, columns, ("size_before", "size_after", "overlap_pct"))
    return f"<section><h2>Population changes</h2><p>How each segment of the previous run lives on (MONIC events).</p>{table}</section>"


def _alerts_section(con: duckdb.DuckDBPyConnection) -> tuple[str, int]:
    drift = _read(
        con,
        """
        select count(*) filter (where migrated) as migrated, count(*) filter (where early_warning) as early_warnings,
               count(*) filter (where drift_flag) as drifting, count(*) filter (where is_churn_risk) as churn_risk
        from customer_drift
        """,
    ).iloc[0]
    alerts = _read(
        con,
        """
        select coalesce(account_owner, '(no owner)') as account_owner, account_name,
               from_segment || ' → ' || coalesce(to_segment, 'no further orders (lapsing)') as move, round(score, 2) as score,
               strftime(opened_as_of, '%Y-%m-%d') as opened_as_of, runs_flagged, evidence, action
        from churn_risk_alerts where status = 'open' order by account_owner, score desc, account_name
        """,
    )
    intro = f"""<p>{int(drift["drifting"])} customers drifting towards price-sensitivity or away from partnership
({int(drift["early_warnings"])} early warnings before any segment change), {int(drift["migrated"])} segment changes,
{int(drift["churn_risk"])} at churn risk; {len(alerts)} open churn-risk alerts, by account owner below.</p>
<p>{_e(quality_summary(_read(con, QUALITY_SQL.format(table="churn_model_quality"))))}.</p>"""
    if alerts.empty:
        return f"<section><h2>Drift and churn risk</h2>{intro}<p>No open churn-risk alerts.</p></section>", 0
    columns = {
        "account_name": "Account",
        "move": "Moving",
        "score": "Score",
        "opened_as_of": "Open since",
        "runs_flagged": "Runs",
        "evidence": "Evidence",
        "action": "Action",
    }
    owners = (
        alerts.groupby("account_owner", sort=False)
        .agg(alerts=("account_name", "size"), top=("score", "max"))
        .sort_values(["top", "alerts"], ascending=False)
    )
    groups = []
    for owner, figures in owners.iterrows():
        rows = alerts[alerts["account_owner"] == owner]
        groups.append(
            f"<details><summary><b>{_e(owner)}</b>: {int(figures['alerts'])} open alert(s), highest score {figures['top']:.2f}</summary>"
            + _table(rows, columns, ("score", "runs_flagged"))
            + "</details>"
        )
    return f"<section><h2>Drift and churn risk</h2>{intro}{''.join(groups)}</section>", len(alerts)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1240px; color: #222; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 0.6em 0 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; white-space: nowrap; } .num { text-align: right; font-variant-numeric: tabular-nums; }
td ul { margin: 0; padding-left: 1.1em; } details { margin: 0.3em 0; } summary { cursor: pointer; }
figure.chart { margin: 0.4em 0; } figure.chart svg { max-width: 100%; height: auto; }
.meta { color: #666; margin-top: 0; }
"""


def render(con: duckdb.DuckDBPyConnection) -> tuple[str, dict]:
    """The report's HTML from an open serving database, and a few figures about it."""
    run = _read(con, "select * from segment_runs where is_latest")
    if run.empty:
        raise NeedsegError("no segmentation run in the serving database: publish a run first (needseg run or needseg publish)")
    run = run.iloc[0]
    run_id, as_of = run["run_id"], pd.Timestamp(run["as_of"]).date()
    segments = _read(
        con,
        """
        -- A segment can be fitted among everyone and among key accounts (when the key tier
        -- is segmented on its own); it is listed once, with everyone's figures first.
        with one_per_segment as (
            select * from segments
            qualify row_number() over (partition by segment_id order by population = 'all' desc) = 1
        )
        select s.segment_id, s.segment, s.population, s.is_emerging, s.stability_jaccard, s.offer, s.action,
               count(c.account_id) as customers,
               count(c.account_id) filter (where c.segment_source = 'surveyed') as surveyed,
               count(c.account_id) filter (where c.segment_source = 'inferred') as inferred,
               count(c.account_id) filter (where c.is_key_account) as key_accounts
        from one_per_segment s left join customer_segments c using (segment_id)
        group by all order by customers desc, s.segment
        """,
    )
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(segments["segment"])}
    order = list(segments["segment"])
    alerts_html, open_alerts = _alerts_section(con)
    sections = [
        _run_section(run, run_id, as_of),
        _segments_section(segments, colours),
        _profile_sections(con, order),
        _movement_section(con, run_id, order, colours),
        _population_section(con, run_id),
        alerts_html,
    ]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>needseg segment report {as_of}</title>
<style>{STYLE}</style></head><body>
<h1>Needs segments as of {as_of}</h1>
<p class="meta">needseg · run {_e(run_id)} · generated {clock.utc_now():%Y-%m-%d %H:%M} UTC from the published serving database</p>
{"".join(sections)}
</body></html>
"""
    return page, {"run_id": str(run_id), "as_of": as_of.isoformat(), "segments": len(segments), "open_alerts": open_alerts}


def write_report(settings: Settings, out: Path | None = None) -> ReportResult:
    """Render the report from the serving database and swap it in with one rename."""
    if not settings.serving_path.exists():
        raise NeedsegError(f"no serving database at {settings.serving_path}: publish a run first (needseg run or needseg publish)")
    with open_serving(settings.serving_path, user_sql=False) as con:
        page, figures = render(con)
    target = write_file_atomically(out or report_path(settings), page.encode("utf-8"))
    return ReportResult(path=str(target), **figures)
