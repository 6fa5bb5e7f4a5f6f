"""The segment report: one self-contained HTML page per publication for analysts and
account teams, read from the published serving database (never the working warehouse).

What the latest run found: the segments with their size (surveyed and inferred), key
accounts, stability and playbook; what each segment needs (a heat map over the needs
dimensions) and how it buys (the behaviour indices that set it apart); how segment sizes
moved over the runs; who moved where since the previous run; the population events; and
the open churn-risk alerts with their evidence. Charts are inline SVG, with no script and
nothing fetched from the network, so the page opens offline and can be mailed as a file.
The page is written to a new file and renamed over the old one, like the serving database.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from pipelines.errors import NeedsegError
from pipelines.churn.run import QUALITY_SQL, quality_summary
from pipelines.publish import write_file_atomically
from pipelines.settings import Settings
from pipelines.warehouse import connect

REPORT_NAME = "segment_report.html"
# Colours per segment, in the order segments are listed (size, descending).
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
TOP_ALERTS = 25
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


def _diverging(value: float, limit: float) -> str:
    """Blue for above everyone's average, red for below, white at zero."""
    share = max(-1.0, min(1.0, value / limit)) if limit else 0.0
    if share >= 0:
        r, g, b = (int(255 - share * (255 - c)) for c in (33, 102, 172))
    else:
        r, g, b = (int(255 + share * (255 - c)) for c in (178, 24, 43))
    return f"rgb({r},{g},{b})"


def _heatmap(rows: list[str], columns: list[str], values: dict[tuple[str, str], float], fmt: str, title: str) -> str:
    cell_w, cell_h, left, top = 92, 26, 190, 90
    finite = [abs(v) for v in values.values() if v is not None and not pd.isna(v)]
    limit = max(finite) if finite else 1.0
    width, height = left + cell_w * len(columns) + 10, top + cell_h * len(rows) + 10
    parts = [f'<svg role="img" aria-label="{_e(title)}" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for j, column in enumerate(columns):
        x = left + j * cell_w + cell_w / 2
        parts.append(f'<text x="{x}" y="{top - 8}" transform="rotate(-35 {x} {top - 8})" font-size="12">{_e(column)}</text>')
    for i, row in enumerate(rows):
        y = top + i * cell_h
        parts.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end" font-size="12">{_e(row)}</text>')
        for j, column in enumerate(columns):
            value = values.get((row, column))
            x = left + j * cell_w
            fill = "#eee" if value is None or pd.isna(value) else _diverging(float(value), limit)
            label = "" if value is None or pd.isna(value) else format(float(value), fmt)
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}"><title>{_e(row)} · {_e(column)}: {_e(label)}</title></rect>'
            )
            parts.append(f'<text x="{x + cell_w / 2 - 1}" y="{y + 17}" text-anchor="middle" font-size="11">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _size_bars(segments: pd.DataFrame, colours: dict[str, str]) -> str:
    bar_h, left, width = 24, 190, 460
    biggest = max(int(segments["customers"].max()), 1)
    height = bar_h * len(segments) + 30
    parts = [f'<svg role="img" aria-label="customers per segment, surveyed and inferred" width="{left + width + 120}" height="{height}">']
    for i, row in enumerate(segments.itertuples()):
        y = 4 + i * bar_h
        surveyed_w = width * row.surveyed / biggest
        inferred_w = width * row.inferred / biggest
        colour = colours[row.segment]
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="12">{_e(row.segment)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y}" width="{surveyed_w:.1f}" height="{bar_h - 6}" fill="{colour}"><title>{row.surveyed} surveyed</title></rect>'
        )
        parts.append(
            f'<rect x="{left + surveyed_w:.1f}" y="{y}" width="{inferred_w:.1f}" height="{bar_h - 6}" fill="{colour}" fill-opacity="0.45">'
            f"<title>{row.inferred} inferred</title></rect>"
        )
        parts.append(f'<text x="{left + surveyed_w + inferred_w + 6:.1f}" y="{y + 15}" font-size="12">{row.customers}</text>')
    y = height - 8
    parts.append(
        f'<rect x="{left}" y="{y - 10}" width="12" height="10" fill="#555"/><text x="{left + 16}" y="{y}" font-size="11">surveyed</text>'
    )
    parts.append(
        f'<rect x="{left + 90}" y="{y - 10}" width="12" height="10" fill="#555" fill-opacity="0.45"/><text x="{left + 106}" y="{y}" font-size="11">inferred</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _size_lines(history: pd.DataFrame, colours: dict[str, str]) -> str:
    """Customers per segment at each run (from segment_history)."""
    runs = sorted(history["as_of"].unique())
    if len(runs) < 2:
        return "<p>Only one run so far: sizes over time appear from the second run on.</p>"
    left, top, width, height = 50, 10, 560, 220
    top_value = max(int(history["customers"].max()), 1)

    def x(i: int) -> float:
        return left + width * i / (len(runs) - 1)

    def y(v: float) -> float:
        return top + height * (1 - v / top_value)

    parts = [f'<svg role="img" aria-label="customers per segment over the runs" width="{left + width + 200}" height="{top + height + 40}">']
    parts.append(f'<line x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top + height}" stroke="#999"/>')
    parts.append(f'<text x="{left - 6}" y="{y(top_value) + 4}" text-anchor="end" font-size="11">{top_value}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + height + 4}" text-anchor="end" font-size="11">0</text>')
    for i, run in enumerate(runs):
        if len(runs) <= 14 or i % max(1, len(runs) // 12) == 0 or i == len(runs) - 1:
            parts.append(f'<text x="{x(i)}" y="{top + height + 16}" text-anchor="middle" font-size="10">{_e(str(run)[:7])}</text>')
    labels = []
    for n, (segment, rows) in enumerate(history.groupby("segment", sort=False)):
        by_run = dict(zip(rows["as_of"], rows["customers"], strict=True))
        points = " ".join(f"{x(i):.1f},{y(by_run.get(run, 0)):.1f}" for i, run in enumerate(runs))
        colour = colours.get(segment, PALETTE[n % len(PALETTE)])
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"><title>{_e(segment)}</title></polyline>')
        last = by_run.get(runs[-1], 0)
        labels.append([y(last) + 4, colour, f"{segment} ({last})"])
    # Segments of similar size end at the same height: push their labels apart.
    labels.sort()
    for above, below in itertools.pairwise(labels):
        below[0] = max(below[0], above[0] + 13)
    for label_y, colour, text in labels:
        parts.append(f'<text x="{left + width + 8}" y="{label_y:.1f}" font-size="11" fill="{colour}">{_e(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(value: object) -> str:
    """A table cell: lists (evidence, segment lists) as bullet points."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, list | tuple):
        items = [v for v in value if v not in (None, "")]
        return "<ul>" + "".join(f"<li>{_e(v)}</li>" for v in items) + "</ul>" if len(items) > 1 else _e(items[0] if items else "")
    if isinstance(value, str) and value in ("{}", "[]"):
        return ""
    return _e(value)


def _table(frame: pd.DataFrame, columns: dict[str, str]) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{_cell(row[c])}</td>" for c in columns) + "</tr>" for _, row in frame.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    return con.execute(sql, params or []).df()


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

    profiles = _read(
        con,
        """
        select segment, dimension, kind, segment_value, index_vs_overall from segment_profiles
        qualify row_number() over (partition by segment_id, dimension, kind order by population = 'all' desc) = 1
        """,
    )
    needs = profiles[profiles["kind"] == "need"]
    need_dims = list(dict.fromkeys(needs["dimension"]))
    needs_map = {(r.segment, r.dimension): r.segment_value for r in needs.itertuples()}
    behaviour = profiles[profiles["kind"] == "behaviour"].copy()
    behaviour_dims: list[str] = []
    if not behaviour.empty:
        # The behaviours that set segments apart most, not all of them.
        spread = behaviour.groupby("dimension")["index_vs_overall"].agg(lambda s: s.abs().max()).sort_values(ascending=False)
        behaviour_dims = list(spread.index[:TOP_BEHAVIOURS])
    behaviour_map = {(r.segment, r.dimension): r.index_vs_overall for r in behaviour.itertuples()}

    history = _read(
        con,
        """
        select r.as_of, h.segment, count(*) as customers
        from segment_runs r join segment_history h
          on h.valid_from <= r.as_of and (h.valid_to is null or h.valid_to > r.as_of)
        group by all order by r.as_of
        """,
    )
    history["segment"] = pd.Categorical(
        history["segment"], categories=list(dict.fromkeys(order + list(history["segment"].unique()))), ordered=True
    )
    history = history.sort_values(["segment", "as_of"])
    history["segment"] = history["segment"].astype(str)

    transitions = _read(
        con, "select from_segment, to_segment, accounts, previous_run_id from segment_transitions where run_id = ?", [run_id]
    )
    events = _read(
        con,
        "select event, from_segments, to_segments, size_before, size_after, detail from segment_population_changes where run_id = ? order by event",
        [run_id],
    )
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
        f"""
        select account_name, account_owner, from_segment || ' → ' || coalesce(to_segment, 'no further orders (lapsing)') as move,
               round(score, 2) as score,
               strftime(opened_as_of, '%Y-%m-%d') as opened_as_of, runs_flagged, evidence, action
        from churn_risk_alerts where status = 'open' order by score desc, account_name limit {TOP_ALERTS}
        """,
    )
    open_alerts = int(con.execute("select count(*) from churn_risk_alerts where status = 'open'").fetchone()[0])
    churn_quality = quality_summary(_read(con, QUALITY_SQL.format(table="churn_model_quality")))

    sections = []
    k_evidence = json.loads(run["k_evidence"]) if isinstance(run["k_evidence"], str) and run["k_evidence"] else []
    evidence_rows = pd.DataFrame(k_evidence)
    sections.append(
        f"""<h2>The run</h2>
<p>Run <b>{_e(run_id)}</b> as of <b>{as_of}</b>, taxonomy <b>{_e(run["taxonomy"])}</b> (basis: {_e(run["basis"])}).
{int(run["customers"])} customers: {int(run["surveyed"])} surveyed, {int(run["inferred"])} inferred from behaviour
(classifier cross-validated accuracy {_pct(run["classifier_cv_accuracy"])}); {int(run["key_accounts"])} key accounts
(80/20 tier, {_e(run["key_account_mode"])}); {int(run["prospects"])} prospects with a predicted segment.</p>
<p>{_e(run["k_reason"])}. Every segment's bootstrap Jaccard ≥ {run["min_jaccard"]:.2f}; silhouette {run["silhouette"]:.2f}.</p>"""
        + (_table(evidence_rows, {c: c for c in evidence_rows.columns}) if not evidence_rows.empty else "")
    )
    segment_table = segments.assign(stability=segments["stability_jaccard"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"))
    sections.append(
        "<h2>Segments</h2>"
        + _size_bars(segments, colours)
        + _table(
            segment_table,
            {
                "segment": "segment",
                "customers": "customers",
                "surveyed": "surveyed",
                "inferred": "inferred",
                "key_accounts": "key accounts",
                "stability": "stability (Jaccard)",
                "offer": "offer",
                "action": "next action",
            },
        )
    )
    if need_dims:
        sections.append(
            "<h2>What each segment needs</h2><p>Survey importance per needs dimension, normalised per respondent "
            "(above 0: more important to this segment than to the average respondent).</p>"
            + _heatmap(order, need_dims, needs_map, "+.2f", "needs per segment")
        )
    if behaviour_dims:
        sections.append(
            "<h2>How each segment buys</h2><p>The behaviours that set segments apart most: the segment's value against "
            "everyone's, as a relative index (0 = same as everyone, +0.5 = 50 % higher).</p>"
            + _heatmap(order, behaviour_dims, behaviour_map, "+.2f", "behaviour per segment")
        )
    sections.append("<h2>Segment sizes over the runs</h2>" + _size_lines(history, colours))
    if not transitions.empty:
        rows = list(dict.fromkeys([*order, *transitions["from_segment"]]))
        cols = list(dict.fromkeys([*order, *transitions["to_segment"]]))
        moves = {(r.from_segment, r.to_segment): float(r.accounts) for r in transitions.itertuples()}
        moved = int(transitions.loc[transitions["from_segment"] != transitions["to_segment"], "accounts"].sum())
        sections.append(
            f"<h2>Who moved since the previous run</h2><p>{moved} customers changed segment since run "
            f"{_e(transitions['previous_run_id'].iloc[0])} (rows: previous segment, columns: now).</p>"
            + _heatmap(rows, cols, moves, ".0f", "transitions")
        )
    if not events.empty:
        sections.append("<h2>Population changes</h2>" + _table(events, {c: c.replace("_", " ") for c in events.columns}))
    sections.append(
        f"""<h2>Drift and churn risk</h2>
<p>{int(drift["drifting"])} customers drifting towards price-sensitivity or away from partnership
({int(drift["early_warnings"])} early warnings before any segment change), {int(drift["migrated"])} segment changes,
{int(drift["churn_risk"])} at churn risk; {open_alerts} open churn-risk alerts{f" (the {TOP_ALERTS} highest below)" if open_alerts > TOP_ALERTS else ""}.</p>
<p>{_e(churn_quality)}.</p>"""
        + (
            _table(
                alerts,
                {
                    "account_name": "account",
                    "account_owner": "owner",
                    "move": "moving",
                    "score": "score",
                    "opened_as_of": "open since",
                    "runs_flagged": "runs",
                    "evidence": "evidence",
                    "action": "action",
                },
            )
            if not alerts.empty
            else "<p>No open churn-risk alerts.</p>"
        )
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>needseg segment report {as_of}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }} svg {{ display: block; margin: 0.8em 0; font-family: inherit; }}
.meta {{ color: #666; }}
</style></head><body>
<h1>Needs segments as of {as_of}</h1>
<p class="meta">needseg · run {_e(run_id)} · generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from the published serving database</p>
{"".join(sections)}
</body></html>
"""
    return page, {"run_id": str(run_id), "as_of": as_of.isoformat(), "segments": len(segments), "open_alerts": open_alerts}


def write_report(settings: Settings, out: Path | None = None) -> ReportResult:
    """Render the report from the serving database and swap it in with one rename."""
    if not settings.serving_path.exists():
        raise NeedsegError(f"no serving database at {settings.serving_path}: publish a run first (needseg run or needseg publish)")
    with connect(settings.serving_path, read_only=True) as con:
        page, figures = render(con)
    target = write_file_atomically(out or report_path(settings), page.encode("utf-8"))
    return ReportResult(path=str(target), **figures)
