"""Data docs: the validation results kept per run, rendered as static HTML that works offline.

Every ingest (and every dry run, `needseg validate`) keeps, under `<quality>/<run_id>/` (a run
id unique per run), great_expectations' validation result per table (`<table>.json`, with the
parser's type, scale and readability checks counted in it) and what happened to each file
(`ingest.json`, with its row-level problems by column and reason). `build_data_docs` turns
all of them into plain HTML files:

    <out>/index.html                    every run, newest first, with its outcome and tables
    <out>/<run_id>/index.html           the run's files (loaded / quarantined / refused / held /
                                        not loadable / changed) and their row-level problems
    <out>/<run_id>/<table>.html         each expectation: success, counts, failing values with
                                        file and line; batch-level ones once per file
                                        (those about a file's columns once per table)

Each expectation is described with great_expectations' own prescriptive renderer (the
sentence its data docs would show, e.g. "price values must be greater than or equal to 1
and less than or equal to 5"); if that renderer is unavailable for an expectation a plain
description is used instead. The pages are self-contained: the styles are inline, there are
no scripts, no fonts and no links to any CDN, so they open from a file share or an
air-gapped machine. GE's own site builder is not used because it needs a data context and
its page templates load Bootstrap and jQuery from the internet.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import DictLoader, Environment

from pipelines.files import write_file_atomically
from pipelines.quality.gate import READABLE_ROWS

log = logging.getLogger(__name__)

DOCS_DIRNAME = "docs"  # default output folder inside the quality folder
SAMPLE_VALUES = 20  # failing values shown per expectation
VALUE_SET_SHOWN = 12  # members of a long value set (e.g. every known account) shown
_LISTED = re.compile(r"(\$(?:v__|column_list_)\d+)(?=\s+\$(?:v__|column_list_)\d+)")


@dataclass
class ExpectationView:
    type: str
    column: str
    description: str
    success: bool
    reason: str
    element_count: int | None
    unexpected_count: int | None
    unexpected_percent: float | None
    observed: str
    samples: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # file, line, value
    error: str | None = None
    file: str | None = None  # a batch-level expectation judges one file: which
    stage: str = ""  # "parse": checked by the parser on the values as read
    notes: str = ""


@dataclass
class TableView:
    run_id: str
    table: str
    success: bool
    evaluated: int
    failed: int
    expectations: list[ExpectationView]
    as_of: str | None
    source: str  # the JSON file rendered


@dataclass
class RunView:
    run_id: str
    as_of: str | None
    summary: str
    dry_run: bool
    files: list[dict[str, Any]]
    tables: list[TableView]
    modified: float
    started_at: str = ""
    outcome: str = ""  # "complete", or the error the run ended with (GateFailed, FilesChanged ...)
    exit_code: int | None = None
    fetch_error: str | None = None
    problems_file: str | None = None

    @property
    def success(self) -> bool:
        if self.outcome:
            return self.outcome == "complete"
        return all(t.success for t in self.tables) and not any(f.get("status") == "rejected" for f in self.files)

    @property
    def shown_files(self) -> list[dict[str, Any]]:
        """Files the run did something with or has something to say about (not the ones
        skipped as loaded before, nor hidden files)."""
        return [f for f in self.files if f.get("status") not in ("already_loaded", "ignored")]

    @property
    def skipped(self) -> int:
        return sum(1 for f in self.files if f.get("status") in ("already_loaded", "ignored"))


def build_data_docs(quality_dir: Path | str, out_dir: Path | str | None = None) -> Path:
    """Render every run kept under `quality_dir` to static HTML; returns the index page.

    `out_dir` defaults to `<quality_dir>/docs`. Pages of runs that are gone from
    `quality_dir` are left alone; the index lists the runs found now. Nothing here touches
    the network.
    """
    quality_dir = Path(quality_dir)
    out = Path(out_dir) if out_dir is not None else quality_dir / DOCS_DIRNAME
    runs = [run for run in (_load_run(folder) for folder in _run_folders(quality_dir, out)) if run is not None]
    runs.sort(key=lambda r: (r.as_of or "", r.started_at or "", r.modified, r.run_id), reverse=True)
    env = _environment()
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        folder = out / run.run_id
        folder.mkdir(parents=True, exist_ok=True)
        write_file_atomically(folder / "index.html", env.get_template("run").render(run=run, css=CSS))
        for table in run.tables:
            write_file_atomically(folder / f"{table.table}.html", env.get_template("table").render(run=run, table=table, css=CSS))
    index = out / "index.html"
    write_file_atomically(index, env.get_template("index").render(runs=runs, css=CSS, quality_dir=str(quality_dir)))
    return index


# --- reading the kept results ---------------------------------------------------------------


def _run_folders(quality_dir: Path, out: Path) -> list[Path]:
    if not quality_dir.is_dir():
        return []
    skip = out.resolve()
    return [
        p for p in sorted(quality_dir.iterdir()) if p.is_dir() and p.resolve() != skip and p.name != DOCS_DIRNAME and any(p.glob("*.json"))
    ]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("data docs: skipping %s: %s", path, exc)
        return None


def _load_run(folder: Path) -> RunView | None:
    report = _read_json(folder / "ingest.json") if (folder / "ingest.json").exists() else None
    tables = []
    for path in sorted(folder.glob("*.json")):
        if path.name == "ingest.json":
            continue
        document = _read_json(path)
        if document is None or "results" not in document:
            continue
        tables.append(_table_view(folder.name, path, document))
    if not tables and report is None:
        return None
    as_of = (report or {}).get("as_of") or next((t.as_of for t in tables if t.as_of), None)
    return RunView(
        run_id=folder.name,
        as_of=as_of,
        summary=(report or {}).get("summary", ""),
        dry_run=bool((report or {}).get("dry_run")),
        files=list((report or {}).get("files", [])),
        tables=tables,
        modified=max(p.stat().st_mtime for p in folder.glob("*.json")),
        started_at=str((report or {}).get("started_at") or ""),
        outcome=str((report or {}).get("outcome") or ""),
        exit_code=(report or {}).get("exit_code"),
        fetch_error=(report or {}).get("fetch_error"),
        problems_file=(report or {}).get("problems_file"),
    )


def _table_view(run_id: str, path: Path, document: dict[str, Any]) -> TableView:
    needseg = (document.get("meta") or {}).get("needseg") or {}
    expectations = [_expectation_view(entry) for entry in document.get("results", [])]
    # Failures first, then in suite order: what needs attention is at the top.
    expectations.sort(key=lambda e: e.success)
    statistics = document.get("statistics") or {}
    return TableView(
        run_id=run_id,
        table=needseg.get("table") or document.get("suite_name") or path.stem,
        success=bool(document.get("success")),
        evaluated=int(statistics.get("evaluated_expectations", len(expectations))),
        failed=int(statistics.get("unsuccessful_expectations", sum(not e.success for e in expectations))),
        expectations=expectations,
        as_of=needseg.get("as_of"),
        source=path.name,
    )


def _expectation_view(entry: dict[str, Any]) -> ExpectationView:
    config = entry.get("expectation_config") or {}
    kwargs = {k: v for k, v in (config.get("kwargs") or {}).items() if k != "batch_id"}
    if "column_list" in kwargs:  # the loader's per-file key part is bookkeeping, not the user's key
        kwargs["column_list"] = [c for c in kwargs["column_list"] if c != "_file_index"]
    result = entry.get("result") or {}
    meta = config.get("meta") or {}
    exception = entry.get("exception_info") or {}
    samples = result.get("partial_unexpected_list") or result.get("unexpected_list") or []
    column = kwargs.get("column") or kwargs.get("column_A") or ", ".join(kwargs.get("column_list") or [])
    if kwargs.get("column_B"):
        column = f"{kwargs['column_A']}, {kwargs['column_B']}"
    notes = []
    if meta.get("declared_in"):
        notes.append(f"declared in {meta['declared_in']}")
    if meta.get("notes"):
        notes.append(str(meta["notes"]))
    if result.get("needseg_files"):
        notes.append("about a file's columns or having rows, the same for every file: checked once over all of them")
    return ExpectationView(
        type=config.get("type", "?"),
        column=column or "(table)",
        description=describe(config.get("type", "?"), kwargs, entry),
        success=bool(entry.get("success")),
        reason=str(meta.get("reason") or ""),
        element_count=result.get("element_count"),
        unexpected_count=result.get("unexpected_count"),
        unexpected_percent=result.get("unexpected_percent"),
        observed=_observed(result),
        samples=[_short(v) for v in samples[:SAMPLE_VALUES]],
        rows=list(result.get("needseg_unexpected_rows") or [])[:SAMPLE_VALUES],
        error=exception.get("exception_message") if exception.get("raised_exception") else None,
        file=result.get("needseg_file"),
        stage=str((entry.get("meta") or {}).get("needseg_stage") or ""),
        notes="; ".join(notes),
    )


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        return _short(result["observed_value"])
    if result.get("element_count") is not None:
        return f"{result.get('unexpected_count', 0)} of {result['element_count']} unexpected"
    return ""


def _short(value: Any, limit: int = 120) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_short(v, 40) for v in value[:VALUE_SET_SHOWN]) + (
            f" … ({len(value)} in all)" if len(value) > VALUE_SET_SHOWN else ""
        )
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- describing an expectation ----------------------------------------------------------------


def describe(kind: str, kwargs: dict[str, Any], entry: dict[str, Any] | None = None) -> str:
    """One sentence for an expectation: great_expectations' prescriptive text, else our own."""
    shown = dict(kwargs)
    hidden = 0
    if isinstance(shown.get("value_set"), list) and len(shown["value_set"]) > VALUE_SET_SHOWN:
        # a long set (every known account) is kept shortened, with its size
        size = ((entry or {}).get("result") or {}).get("needseg_value_set_size") or len(shown["value_set"])
        hidden = size - VALUE_SET_SHOWN
        shown["value_set"] = shown["value_set"][:VALUE_SET_SHOWN]
    text = _ge_sentence(kind, shown, entry)
    if text is None:
        text = _plain_sentence(kind, shown)
    if hidden:
        text = text.rstrip(".") + f" … and {hidden} more."
    return text


def _ge_sentence(kind: str, kwargs: dict[str, Any], entry: dict[str, Any] | None) -> str | None:
    try:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        from great_expectations.core import ExpectationValidationResult
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        config = ExpectationConfiguration(type=kind, kwargs=kwargs)
        evr = ExpectationValidationResult(
            success=bool((entry or {}).get("success", True)),
            expectation_config=config,
            result=(entry or {}).get("result") or {},
        )
        evr.render()
        for content in config.rendered_content or []:
            rendered = content.to_json_dict()
            if rendered.get("name") != "atomic.prescriptive.summary":
                continue
            value = rendered.get("value") or {}
            template = value.get("template")
            if not template:
                return None
            params = {name: _param_text(p.get("value")) for name, p in (value.get("params") or {}).items()}
            # GE lists set members and key columns as "$v__0 $v__1": separate them with commas.
            template = _LISTED.sub(r"\1,", template)
            sentence = string.Template(template).safe_substitute(params)
            return " ".join(sentence.split())
    except Exception as exc:  # noqa: BLE001 - any renderer failure falls back to our own sentence
        log.debug("GE renderer failed for %s: %s", kind, exc)
    return None


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_param_text(v) for v in value)
    return str(value)


def _plain_sentence(kind: str, kwargs: dict[str, Any]) -> str:
    column = kwargs.get("column")
    if kind == "expect_column_values_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = " and ".join(x for x in (f"at least {lo}" if lo is not None else "", f"at most {hi}" if hi is not None else "") if x)
        return f"{column} values must be {bounds}."
    if kind == "expect_column_values_to_not_be_null":
        return f"{column} values must never be null."
    if kind == "expect_column_values_to_be_in_set":
        return f"{column} values must belong to this set: {_param_text(kwargs.get('value_set'))}."
    if kind == READABLE_ROWS:
        return "Every line must read as a row: as many fields as the header, no truncated last line, no broken record."
    args = ", ".join(f"{k}={_short(v, 60)}" for k, v in kwargs.items())
    return f"{kind}({args})"


# --- pages ---------------------------------------------------------------------------------------


def _environment() -> Environment:
    env = Environment(loader=DictLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["url"] = lambda text: quote(str(text), safe="")
    env.filters["pct"] = lambda v: "" if v is None else f"{v:.1f} %"
    return env


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.muted { color: #656d76; } a { color: #0550ae; text-decoration: none; } a:hover { text-decoration: underline; }
table { border-collapse: collapse; width: 100%; margin: .6rem 0 1rem; } th, td { text-align: left; vertical-align: top; padding: .35rem .5rem; border-bottom: 1px solid #d0d7de; }
th { background: #f6f8fa; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; } .warn { color: #9a6700; font-weight: 600; }
code, .value { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; background: #f6f8fa; padding: 0 .25rem; border-radius: 3px; }
ul.compact { margin: 0; padding-left: 1.1rem; } nav { margin-bottom: 1rem; }
"""

_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><style>{{ css | safe }}</style></head><body>
"""

TEMPLATES = {
    "index": _HEAD.replace("{{ title }}", "needseg data docs")
    + """
<h1>needseg data docs</h1>
<p class="muted">Validation results kept per run in <code>{{ quality_dir }}</code>; newest run first.</p>
{% if not runs %}<p>No validation results yet: run <code>needseg ingest</code> or <code>needseg validate</code>.</p>{% endif %}
<table>
<tr><th>run</th><th>as of</th><th>started (UTC)</th><th>outcome</th><th>tables</th><th>summary</th></tr>
{% for run in runs %}
<tr>
  <td><a href="{{ run.run_id | url }}/index.html">{{ run.run_id }}</a>{% if run.dry_run %} <span class="muted">(dry run)</span>{% endif %}</td>
  <td>{{ run.as_of or "" }}</td>
  <td>{{ run.started_at }}</td>
  <td>{% if run.success %}<span class="ok">passed</span>{% else %}<span class="fail">{{ run.outcome if run.outcome and run.outcome != "complete" else "failures" }}</span>{% if run.exit_code %} <span class="muted">(exit {{ run.exit_code }})</span>{% endif %}{% endif %}</td>
  <td><ul class="compact">{% for t in run.tables %}<li><a href="{{ run.run_id | url }}/{{ t.table | url }}.html">{{ t.table }}</a>
      {% if t.success %}<span class="ok">✓</span>{% else %}<span class="fail">{{ t.failed }} of {{ t.evaluated }} failed</span>{% endif %}</li>{% endfor %}</ul></td>
  <td class="muted">{{ run.summary }}</td>
</tr>
{% endfor %}
</table>
</body></html>
""",
    "run": _HEAD.replace("{{ title }}", "needseg run {{ run.run_id }}")
    + """
<nav><a href="../index.html">← all runs</a></nav>
<h1>Run {{ run.run_id }}{% if run.dry_run %} <span class="muted">(dry run: nothing was written)</span>{% endif %}</h1>
<p class="muted">as of {{ run.as_of or "?" }}{% if run.started_at %}, started {{ run.started_at }}{% endif %}. {{ run.summary }}</p>
{% if not run.success %}<p class="fail">{{ run.outcome }}{% if run.exit_code %} (exit code {{ run.exit_code }}){% endif %}: see the files below.</p>{% endif %}
{% if run.fetch_error %}<p class="fail">HTTP sources: {{ run.fetch_error }}</p>{% endif %}
<h2>Quality suites</h2>
<table>
<tr><th>table</th><th>outcome</th><th class="num">expectations</th><th class="num">failed</th></tr>
{% for t in run.tables %}
<tr><td><a href="{{ t.table | url }}.html">{{ t.table }}</a></td>
<td>{% if t.success %}<span class="ok">passed</span>{% else %}<span class="fail">failed</span>{% endif %}</td>
<td class="num">{{ t.evaluated }}</td><td class="num">{{ t.failed }}</td></tr>
{% endfor %}
</table>
{% if run.files %}
<h2>Files</h2>
<p class="muted">Every row read is in raw or in quarantine (<code>meta.quarantine</code>, with file, line, column, value and reason; <code>needseg quarantine</code> lists them).
{% if run.skipped %}{{ run.skipped }} file(s) loaded before or hidden/temporary are not listed.{% endif %}</p>
<table>
<tr><th>file</th><th>table</th><th>status</th><th class="num">read</th><th class="num">to raw</th><th class="num">quarantined</th><th>reasons / message</th></tr>
{% for f in run.shown_files %}
<tr><td><code>{{ f.file }}</code></td><td>{{ f.table }}</td>
<td>{% if f.status == "rejected" %}<span class="fail">refused</span>{% elif f.status == "not_loadable" %}<span class="fail">not loadable</span>{% elif f.status == "held" %}<span class="warn">held back</span>{% elif f.status == "conflict" %}<span class="warn">changed</span>{% elif f.status in ("loaded", "valid") %}<span class="ok">{{ f.status }}</span>{% else %}<span class="muted">{{ f.status }}</span>{% endif %}</td>
<td class="num">{{ f.rows_read }}</td><td class="num">{{ f.rows_loaded }}</td><td class="num">{{ f.rows_quarantined }}</td>
<td>{% if f.quarantine_reasons %}<ul class="compact">{% for reason, n in f.quarantine_reasons.items() %}<li>{{ n }} × {{ reason }}</li>{% endfor %}</ul>{% endif %}
{% if f.message %}<div>{{ f.message }}</div>{% endif %}</td></tr>
{% endfor %}
</table>
{% endif %}
{% set with_problems = run.files | selectattr("problems") | list %}
{% if with_problems %}
<h2>Row-level problems</h2>
<p class="muted">By file, column and reason, with the first lines of each{% if run.problems_file %}; every one of this dry run: <code>{{ run.problems_file }}</code>{% else %}; every one: <code>needseg quarantine --file FILE</code>{% endif %}.</p>
<table>
<tr><th>file</th><th>column</th><th>reason</th><th class="num">rows</th><th>expected</th><th>lines (value as read)</th></tr>
{% for f in with_problems %}{% for g in f.problems %}
<tr><td><code>{{ f.file }}</code></td><td>{{ g.column or "(whole line)" }}</td><td>{{ g.reason }}</td><td class="num">{{ g.count }}</td><td>{{ g.expected or "" }}</td>
<td><ul class="compact">{% for l in g.lines %}<li>line {{ l.line }}: <span class="value">{{ l.value if l.value is not none else "(empty)" }}</span></li>{% endfor %}{% if g.count > g.lines | length %}<li class="muted">… and {{ g.count - g.lines | length }} more</li>{% endif %}</ul></td></tr>
{% endfor %}{% endfor %}
</table>
{% endif %}
</body></html>
""",
    "table": _HEAD.replace("{{ title }}", "{{ table.table }} — run {{ run.run_id }}")
    + """
<nav><a href="../index.html">← all runs</a> · <a href="index.html">run {{ run.run_id }}</a></nav>
<h1>{{ table.table }} <span class="muted">run {{ run.run_id }}</span></h1>
<p>{% if table.success %}<span class="ok">All {{ table.evaluated }} expectations passed.</span>{% else %}<span class="fail">{{ table.failed }} of {{ table.evaluated }} expectations failed.</span>{% endif %}
<span class="muted">Failing rows {% if run.dry_run %}would go{% else %}went{% endif %} to quarantine with the reason shown; validated with great_expectations from <code>{{ table.source }}</code>.</span></p>
<table>
<tr><th>status</th><th>expectation</th><th>column</th><th class="num">rows</th><th class="num">unexpected</th><th>observed / failing values</th></tr>
{% for e in table.expectations %}
<tr>
  <td>{% if e.success %}<span class="ok">✓ passed</span>{% else %}<span class="fail">✗ failed</span>{% endif %}</td>
  <td>{{ e.description }}<br><span class="muted"><code>{{ e.type }}</code>{% if e.reason %} — quarantine reason: {{ e.reason }}{% endif %}{% if e.stage %} — checked by: {{ e.stage }}{% endif %}{% if e.notes %} — {{ e.notes }}{% endif %}</span>
      {% if e.error %}<div class="fail">could not be checked: {{ e.error }}</div>{% endif %}</td>
  <td>{{ e.column }}{% if e.file %}<br><span class="muted">file <code>{{ e.file }}</code></span>{% endif %}</td>
  <td class="num">{{ e.element_count if e.element_count is not none else "" }}</td>
  <td class="num">{% if e.unexpected_count is not none %}{{ e.unexpected_count }}<br><span class="muted">{{ e.unexpected_percent | pct }}</span>{% endif %}</td>
  <td>{% if e.rows %}<ul class="compact">{% for r in e.rows %}<li><span class="value">{{ r.value }}</span> <span class="muted">{{ r.file }} line {{ r.line }}</span></li>{% endfor %}</ul>
      {% elif e.samples %}{% for v in e.samples %}<span class="value">{{ v }}</span> {% endfor %}
      {% else %}<span class="muted">{{ e.observed }}</span>{% endif %}</td>
</tr>
{% endfor %}
</table>
</body></html>
""",
}
