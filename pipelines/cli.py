"""The `needseg` command line: every pipeline step without Airflow, plus demo, query, status.

Exit codes: see EXIT_CODES (shown by `needseg --help` and every command's --help).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

from pipelines import clock
from pipelines.errors import NeedsegError
from pipelines.settings import Settings, load_settings

EXIT_CODES = """exit codes:
  0    done
  1    failed; the message says why (e.g. the warehouse is locked by another process)
  2    configuration error (a source mapping, config/needseg.yaml, a taxonomy)
  130  interrupted"""

INGEST_EXIT_CODES = """exit codes (3-6 come from ingest, validate and run only):
  0    done: every file in the landing folder is loaded, or was already
  1    failed; the message says why (e.g. the warehouse is locked by another process)
  2    configuration error (a source mapping, config/needseg.yaml, a taxonomy)
  3    the quality gate refused a file, or held one back while the accounts it names could
       not be loaded; the report names each file and expectation (rows: needseg quarantine)
  4    a file in the landing folder cannot be loaded: wrong folder, unknown table, a name
       the mapping's `files` pattern does not match, or a format needseg cannot read; the
       report says where it should go
  5    a file changed after it was loaded; the new content was not appended (deliver
       changes as a new file, or load it as a new batch with ingest --accept-changed)
  6    an HTTP source could not be fetched; the landing files that did arrive were loaded
  130  interrupted
Files that load are loaded either way. With several of 3-6 the lowest is returned; the
report lists every file."""

INGEST_COMMANDS = ("ingest", "validate", "run")
# Commands that write to the data directory: one at a time (pipelines.cycle.data_dir_lock).
WRITER_COMMANDS = ("ingest", "build", "segment", "drift", "publish", "run")
# Commands whose --as-of picks an existing segmentation run (default: the latest one).
READS_A_RUN = ("alerts", "dbt-docs")

AS_OF_RULE = """dates: --as-of is the day a run describes (YYYY-MM-DD). Commands that make a run
(ingest, validate, build, segment, drift, publish, run) default to yesterday (UTC), the last
complete day, as Airflow's scheduled runs do; commands that read one (alerts, dbt-docs)
default to the latest segmentation run."""


def yesterday() -> dt.date:
    """The default as-of of a command that makes a run: the last complete day (UTC)."""
    return clock.utc_now().date() - dt.timedelta(days=1)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("needseg")
    except PackageNotFoundError:
        return "unknown"


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; expected YYYY-MM-DD") from None


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(getattr(args, "data_dir", None))
    if getattr(args, "landing", None):
        settings = settings.with_overrides(landing_dir=args.landing)
    if getattr(args, "mappings", None):
        settings = settings.with_overrides(mappings_dir=args.mappings)
    return settings


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes, before or after its name. On the subcommands their
    default is SUPPRESS, so a value given before the command name is not reset."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what each step does (INFO level)",
        **({"default": argparse.SUPPRESS} if suppress else {"default": False}),
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder for the warehouse, serving database, exports and report (default: $NEEDSEG_DATA_DIR or ./data)",
        **default,
    )


def _common(parser: argparse.ArgumentParser, as_of: bool = True, landing: bool = False) -> None:
    _global_options(parser, suppress=True)
    if landing:
        parser.add_argument("--landing", type=Path, help="landing folder (default: <data-dir>/landing or $NEEDSEG_LANDING_DIR)")
        parser.add_argument("--mappings", type=Path, help="folder of source mappings (default: config/sources or $NEEDSEG_MAPPINGS_DIR)")
    if as_of:
        parser.add_argument(
            "--as-of",
            type=_date,
            default=None,
            help="the day the run describes, YYYY-MM-DD (default: yesterday, UTC: the last complete day)",
        )


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.demo.world import WorldSpec, generate

    spec = WorldSpec(
        seed=args.seed,
        customers=args.customers,
        prospects=args.prospects,
        start_month=args.start_month,
        end_month=args.end_month,
        survey_every_months=0 if args.no_surveys else 6,
    )
    out = args.out or (_settings(args).data_dir / "world")
    summary = generate(out, spec)
    print(
        f"generated {summary.accounts} accounts ({spec.customers} customers, {spec.prospects} prospects) over {summary.months} months "
        f"in {out}: {summary.order_lines:,} order lines, {summary.support_tickets:,} tickets, {summary.quotes:,} quotes, "
        f"{summary.survey_responses:,} survey responses, {summary.drifters} planted drifters, {summary.churners} churners; "
        f"top 20 % of customers hold {summary.key_account_revenue_share:.0%} of revenue.\n"
        f"Monthly extracts: {out}/extracts/<month>/  (deliver them with: needseg deliver --world {out} --through <YYYY-MM>)\n"
        f"Ground truth (never read by the pipeline): {out}/truth/"
    )
    return 0


def cmd_deliver(args: argparse.Namespace) -> int:
    from pipelines.demo.world import deliver

    settings = _settings(args)
    copied = deliver(args.world, settings.landing_dir, args.through)
    print(f"delivered {copied} new file(s) up to {args.through} into {settings.landing_dir}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipelines.ingest.loader import IngestIncomplete, ingest
    from pipelines.progress import Progress
    from pipelines.warehouse import open_scratch_copy, open_warehouse

    settings = _settings(args)
    dry_run = getattr(args, "dry_run", False)
    # A dry run checks against a scratch copy: the working warehouse is only read.
    opened = open_scratch_copy(settings.warehouse_path) if dry_run else open_warehouse(settings.warehouse_path)

    with opened as con, Progress(f"needseg {'validate' if dry_run else 'ingest'}") as progress:
        progress.stage(f"reading, checking and {'validating' if dry_run else 'loading'} the files in {settings.landing_dir}")
        try:
            report = ingest(
                settings,
                con,
                args.as_of,
                f"{'validate' if dry_run else 'ingest'}-{args.as_of}",
                sources=args.source or None,
                accept_changed=args.accept_changed,
                dry_run=dry_run,
                fetch=not dry_run and not args.no_fetch,
            )
        except IngestIncomplete as incomplete:
            # Every file's outcome first, then the error (stderr) and its exit code.
            _print_report(incomplete.report, verbose=args.list_all, quality_dir=settings.quality_dir)
            raise
    _print_report(report, verbose=args.list_all, quality_dir=settings.quality_dir)
    return 0


STATUS_LABELS = {
    "rejected": "refused",
    "valid": "would load",
    "not_loadable": "not loadable",
    "already_loaded": "already loaded",
    "conflict": "changed",
}
PROBLEM_LINES_SHOWN = 5  # lines shown per file x column x reason (all of them up to twice that)


def _print_file(f) -> None:
    """One file's outcome line, its quarantine reasons and its message."""
    if f.status in ("loaded", "rejected", "valid"):
        detail = f"{f.rows_read} read, {f.rows_loaded} to raw, {f.rows_quarantined} quarantined"
    elif f.status == "held":
        detail = f"{f.rows_read} read, nothing written"
    else:
        detail = ""
    print(f"{STATUS_LABELS.get(f.status, f.status):>14}  {f.file}  {detail}".rstrip())
    for reason, n in sorted((f.quarantine_reasons or {}).items(), key=lambda x: -x[1]):
        print(f"{'':>16}{n:>6} x {reason}")
    if f.message:
        print(f"{'':>16}{f.message}")


def _print_problems(f) -> None:
    """One file's row-level problems by column and reason, with example lines."""
    whole = {"rejected": "  (refused: no row loaded)", "held": "  (held back: no row written)"}.get(f.status, "")
    print(f"  {f.file}{whole}")
    for group in f.problems:
        expected = f"; expected {group['expected']}" if group.get("expected") else ""
        print(f"    {group['column'] or '(whole line)'}: {group['reason']}, {group['count']} row(s){expected}")
        shown = group["lines"] if group["count"] <= 2 * PROBLEM_LINES_SHOWN else group["lines"][:PROBLEM_LINES_SHOWN]
        for example in shown:
            value = "(empty)" if example["value"] is None else repr(example["value"])
            print(f"      line {example['line']}: {value}")
        if group["count"] > len(shown):
            print(f"      ... and {group['count'] - len(shown)} more")


def _print_report(report, verbose: bool = False, quality_dir: Path | None = None) -> None:
    """What the run did to every file, then its row-level problems by file, column and reason."""
    for fetched in report.fetched:
        print(f"{'fetched':>14}  {fetched}")
    for f in report.files:
        if verbose or f.status not in ("already_loaded", "ignored"):
            _print_file(f)
    with_problems = [f for f in report.files if f.problems]
    if with_problems:
        print("\nrow-level problems, by file, column and reason:")
        for f in with_problems:
            _print_problems(f)
        if report.problems_file:
            print(f"every row-level problem of this dry run: {report.problems_file}")
        elif any(f.rows_quarantined for f in with_problems):
            print("every quarantined row, with the row as read: needseg quarantine --file <file> [--csv]")
    if report.fetch_error:
        print(f"HTTP sources: {report.fetch_error}")
    print(report.summary())
    if report.run_id:
        where = f" in {quality_dir / report.run_id}" if quality_dir else ""
        print(f"run {report.run_id}: report and validation results kept{where} (needseg docs renders them)")


def cmd_validate(args: argparse.Namespace) -> int:
    args.dry_run = True
    args.accept_changed = False
    args.no_fetch = True
    return cmd_ingest(args)


def cmd_build(args: argparse.Namespace) -> int:
    from pipelines import cycle

    settings = _settings(args)
    stages = {"features": ["features"], "serving": ["serving"], "all": ["features", "serving"]}[args.select]
    for stage in stages:
        detail = cycle.STEP_FUNCTIONS[stage](args.as_of, settings)
        print(f"{stage}: dbt build {detail['select']} - {detail['nodes']} nodes in {detail['seconds']:.1f} s")
        for warning in detail.get("warnings", []):
            print(f"  warning: {warning}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from pipelines import cycle

    print(cycle.segment_step(args.as_of, _settings(args))["summary"])
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from pipelines import cycle

    print(cycle.drift_step(args.as_of, _settings(args))["summary"])
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from pipelines import cycle

    if args.pending_only and args.as_of is not None:
        raise NeedsegError("--pending-only composes no digest, so --as-of does not apply; use one or the other")
    detail = cycle.alerts_step(
        args.as_of, _settings(args), raise_if_undelivered=args.strict, pending_only=args.pending_only, retry_failed=args.retry_failed
    )
    print(detail["summary"])
    listed = detail.get("undelivered", [])
    for line in listed:
        print(f"  not delivered yet: {line}")
    if detail.get("undelivered_total", 0) > len(listed):
        print(f"  ... and {detail['undelivered_total'] - len(listed)} more (needseg status, or the table alerts.outbox)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate
    from pipelines.files import write_file_atomically
    from pipelines.progress import Progress

    settings = _settings(args)
    if getattr(args, "data_dir", None) is None:
        settings = settings.with_overrides(data_dir=settings.data_dir / ("evaluate-no-surveys" if args.no_surveys else "evaluate"))
    if args.suite:
        return _evaluate_suite(args, settings)
    if args.variant:
        raise NeedsegError("--variant applies only with --suite")

    with Progress("needseg evaluate") as progress:
        progress.stage("replaying the world's months through the pipeline")
        report = evaluate(settings, args.world, args.first_month, say=progress.log, surveys=not args.no_surveys)
    print()
    for line in report.lines():
        print(line)
    out = settings.data_dir / "evaluation.json"
    write_file_atomically(out, json.dumps(report.as_dict(), indent=1, default=str))
    print(f"\nfigures as JSON: {out}")
    return 0


def _evaluate_suite(args: argparse.Namespace, settings) -> int:
    from pipelines.evaluate_suite import run_suite

    if args.world or args.first_month or args.no_surveys:
        raise NeedsegError("--suite generates its own worlds: --world, --first-month and --no-surveys do not apply")
    if args.jobs < 1:
        raise NeedsegError(f"--jobs: expected 1 or more, got {args.jobs}")
    try:
        report = run_suite(
            settings,
            args.suite,
            jobs=args.jobs,
            rerun=args.rerun,
            keep=args.keep_worlds,
            table_only=args.table_only,
            variants=args.variant,
        )
    except ValueError as exc:
        raise NeedsegError(f"--variant: {exc}") from None
    print()
    for line in report.lines():
        print(line)
    print(f"\nper world and summary as JSON: {settings.data_dir / f'suite-{args.suite}'}")
    return 1 if report.failed else 0


def cmd_docs(args: argparse.Namespace) -> int:
    from pipelines.quality.docs import build_data_docs

    settings = _settings(args)
    index = build_data_docs(settings.quality_dir, args.out)
    print(f"data docs: {index}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from pipelines import cycle

    print(cycle.publish_step(args.as_of, _settings(args))["summary"])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report import write_report

    print(write_report(_settings(args), args.out).summary())
    return 0


def cmd_dbt_docs(args: argparse.Namespace) -> int:
    from pipelines import transform
    from pipelines.config import load_config
    from pipelines.warehouse import open_warehouse

    settings = _settings(args)
    if not settings.warehouse_path.exists():
        raise NeedsegError(f"no warehouse at {settings.warehouse_path} yet: run a cycle first (needseg run)")
    with open_warehouse(settings.warehouse_path) as con:
        latest = con.execute("select max(as_of) from segments.segment_runs").fetchone()[0]
    as_of = args.as_of or latest or clock.utc_today()
    out = args.out or settings.report_dir / "dbt_docs.html"
    print(f"dbt docs (as of {as_of}): {transform.build_docs(settings, load_config(settings.config_path), as_of, out)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines import cycle
    from pipelines.ingest.loader import IngestIncomplete
    from pipelines.progress import Progress

    settings = _settings(args)
    print(f"needseg cycle as of {args.as_of}: landing {settings.landing_dir}, warehouse {settings.warehouse_path}")
    stages = list(cycle.STAGES)
    with Progress("needseg run") as progress:
        progress.stage(stages[0], total=len(stages), unit="stages")

        def show(stage: str, detail: dict) -> None:
            text = detail.get("summary") or (f"dbt build {detail.get('select')}, {detail.get('nodes')} nodes" if "select" in detail else "")
            progress.log(f"  {stage:<9} {detail['seconds']:6.1f} s  {text}")
            done = stages.index(stage) + 1
            if done < len(stages):
                progress.stage(stages[done], total=len(stages), unit="stages")
                progress.update(done=done)

        try:
            report = cycle.run_cycle(args.as_of, settings, on_stage=show)
        except IngestIncomplete as incomplete:
            _print_report(incomplete.report, quality_dir=settings.quality_dir)
            raise
    print(f"done in {report.seconds:.1f} s; serving database: {settings.serving_path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pipelines.bench.run import run_bench

    out = args.out or (_settings(args).data_dir / "bench")
    sizes = args.accounts or [10_000, 100_000, 1_000_000]
    print(f"needseg bench: {', '.join(f'{n:,}' for n in sizes)} accounts; worlds and runs in {out}", flush=True)
    run_bench(
        sizes,
        out,
        file_format=args.format,
        seed=args.seed,
        peer=not args.no_peer,
        incremental=not args.no_incremental,
        quality=args.quality,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo.runner import run_demo, summary_lines
    from pipelines.demo.world import WorldSpec

    settings = _settings(args)
    spec = WorldSpec(seed=args.seed, customers=args.customers, prospects=args.prospects)
    print(f"needseg demo: a synthetic B2B company, {args.cycles} monthly cycles run by Airflow's scheduler; data in {settings.data_dir}")
    run_demo(settings, spec, args.cycles)
    for line in summary_lines(settings):
        print(line)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from pipelines.warehouse import open_serving

    with open_serving(_settings(args).serving_path) as con:
        try:
            relation = con.sql(args.sql)
            if relation is None:
                return 0
            if args.csv:
                from pipelines.csv_output import write_csv

                write_csv(relation.df(), sys.stdout)
            else:
                relation.show(max_width=args.width, max_rows=args.limit)
        except duckdb.Error as exc:
            raise NeedsegError(f"query failed: {exc}") from None
    return 0


def _publication(settings: Settings) -> tuple[list[str], dt.datetime | None]:
    """What analysts see now: the published run, when, and its verdict when recorded."""
    from pipelines.warehouse import open_serving

    if not settings.serving_path.exists():
        return [f"published: nothing yet ({settings.serving_path} does not exist: needseg run, or make demo)"], None
    with open_serving(settings.serving_path) as con:
        run_id, as_of, published_at = con.execute("select run_id, as_of, published_at from publication").fetchone()
        columns = {c for (c,) in con.execute("select column_name from duckdb_columns() where table_name = 'segment_runs'").fetchall()}
        verdict = None
        if "verdict" in columns:
            verdict = con.execute("select verdict from segment_runs where run_id = ?", [run_id]).fetchone()
    lines = [f"published: run {run_id} as of {as_of}, published {published_at:%Y-%m-%d %H:%M} UTC ({settings.serving_path})"]
    if verdict is not None and verdict[0] is not None:
        lines.append(f"  verdict of that run: {verdict[0]}")
    return lines, published_at


def _since_publish(con, published_at: dt.datetime | None) -> str:
    since = published_at or dt.datetime(1970, 1, 1)
    batches, loaded, quarantined = con.execute(
        "select count(*), coalesce(sum(rows_loaded), 0), coalesce(sum(rows_quarantined), 0) from meta.batches where loaded_at > ?",
        [since],
    ).fetchall()[0]
    when = "since that publish" if published_at else "so far"
    return f"loaded {when}: {batches} batch(es), {loaded:,} rows to raw, {quarantined:,} rows quarantined"


def _channels() -> list[str]:
    from pipelines.alerts.channels import configured_senders

    senders = configured_senders(use_airflow_connections=False)
    lines = ["alert channels: the alerts.outbox table (always)"]
    for channel, how in (
        ("email", "NEEDSEG_SMTP_HOST or the Airflow connection needseg_smtp"),
        ("webhook", "NEEDSEG_ALERT_WEBHOOK_URL or needseg_alert_webhook"),
    ):
        sender = senders.get(channel)
        lines.append(
            f"  {channel:<8} {sender.describe() if sender else f'not configured here ({how}; connections are read inside Airflow)'}"
        )
    return lines


def _dag_runs() -> list[str]:
    from pipelines.airflow.history import latest_runs

    runs, where = latest_runs()
    if not runs:
        return [where if "not reachable" in where else f"DAG runs: none yet in {where}"]
    return [f"latest DAG runs ({where}):", *(f"  {run.line()}" for run in runs)]


def cmd_status(args: argparse.Namespace) -> int:
    from pipelines.alerts.outbox import outbox_overview
    from pipelines.warehouse import open_warehouse

    settings = _settings(args)
    if not settings.warehouse_path.exists():
        raise NeedsegError(f"no warehouse at {settings.warehouse_path} yet: run needseg ingest or needseg run")
    published, published_at = _publication(settings)
    for line in published:
        print(line)
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        summary = con.cursor()  # its own cursor: a half-read result must not block the tables below
        try:
            print(_since_publish(summary, published_at))
            for line in [*_channels(), *outbox_overview(summary), *_dag_runs()]:
                print(line)
        finally:
            summary.close()
        print("\nbatches by table and status:")
        con.sql(
            "select table_name, status, count(*) as batches, sum(rows_read) as rows_read, sum(rows_loaded) as rows_loaded, "
            "sum(rows_quarantined) as rows_quarantined from meta.batches group by all order by all"
        ).show()
        waiting = con.execute(
            "select file, status, message from meta.batches where status in ('rejected', 'held') order by file"
        ).fetchall()
        if waiting:
            print("files waiting for a fix (refused, or held back; each is tried again on the next run):")
            for file, status, message in waiting:
                print(f"  {'refused' if status == 'rejected' else status:>8}  {file}: {message}")
            print()
        print("\n".join(_late_account_lines(con)))
        print("quarantine by reason (the rows themselves: needseg quarantine):")
        con.sql(
            "select table_name, split_part(reason, ':', 1) as reason, count(*) as rows from meta.quarantine group by all order by rows desc limit 20"
        ).show()
        try:
            print("segmentation runs:")
            con.sql(
                "select run_id, as_of, k, customers, surveyed, inferred, round(min_jaccard, 3) as min_jaccard, classifier_cv_accuracy, verdict, seconds from segments.segment_runs order by as_of"
            ).show()
            print("latest cycle stage timings (seconds):")
            con.sql(
                "select run_id, stage, round(seconds, 1) as seconds from meta.cycle_runs where as_of = (select max(as_of) from meta.cycle_runs) order by started_at"
            ).show()
        except Exception:  # noqa: BLE001 - no segmentation yet
            print("  none yet")
        from pipelines.churn.run import quality_lines

        print("\n".join(quality_lines(con)))
    return 0


def _late_account_lines(con) -> list[str]:
    """Rows waiting in quarantine for their account, and rows replayed once it arrived."""
    import duckdb

    try:
        replays, replayed = con.execute("select count(*), coalesce(sum(rows), 0) from meta.replayed").fetchall()[0]
    except duckdb.CatalogException:  # a warehouse from before replays
        replays, replayed = 0, 0
    waiting = con.execute("select count(*) from meta.quarantine where starts_with(reason, 'unknown account')").fetchall()[0][0]
    return [
        f"rows replayed from quarantine once their account arrived: {replayed} (in {replays} batch replay(s))",
        f"rows in quarantine for an unknown account (replayed automatically when it arrives): {waiting}",
        "",
    ]


def cmd_quarantine(args: argparse.Namespace) -> int:
    from pipelines.ingest.quarantine import quarantined_rows
    from pipelines.warehouse import open_warehouse

    settings = _settings(args)
    if not settings.warehouse_path.exists():
        raise NeedsegError(f"no warehouse at {settings.warehouse_path} yet: run needseg ingest or needseg run")
    limit = args.limit if args.limit is not None else (None if args.csv else 50)
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        total, frame = quarantined_rows(
            con,
            batch=args.batch,
            file=args.file,
            table=args.table,
            reason=args.reason,
            source=args.source,
            limit=limit or None,
            full=args.csv,
        )
    if args.csv:
        from pipelines.csv_output import write_csv

        write_csv(frame, sys.stdout)
        return 0
    if not frame.empty:
        import pandas as pd

        with pd.option_context("display.max_colwidth", args.width, "display.width", 250):
            print(frame.fillna("").to_string(index=False))
    more = "; --limit 0 or --csv for all of them" if len(frame) < total else ""
    print(f"{len(frame)} of {total} quarantined row(s){more}")
    return 0


def cmd_expectations(args: argparse.Namespace) -> int:
    from pipelines.quality.gate import write_suites
    from pipelines.settings import EXPECTATIONS_DIR

    if not args.write:
        print("use --write to create or refresh the suites in expectations/ from the input contract")
        return 0
    for path in write_suites(EXPECTATIONS_DIR):
        print(f"wrote {path}")
    return 0


def cmd_dbt_manifest(args: argparse.Namespace) -> int:
    from pipelines.transform import ensure_manifest

    print(f"dbt manifest: {ensure_manifest()}")
    return 0


def cmd_airflow(args: argparse.Namespace) -> int:
    from pipelines.airflow.local import serve

    return serve(port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="needseg",
        description="B2B needs-based customer segmentation as a scheduled batch pipeline.",
        epilog=f"{AS_OF_RULE}\n\n{INGEST_EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"needseg {version()}", help="print needseg's version and exit")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("generate", help="generate the demo world (monthly CRM and survey extracts + ground truth)")
    _common(p, as_of=False)
    p.add_argument("--out", type=Path, help="folder to write the world to (default: <data-dir>/world)")
    p.add_argument("--customers", type=int, default=1500, help="customers to generate (default 1500)")
    p.add_argument("--prospects", type=int, default=150, help="prospects to generate (default 150)")
    p.add_argument("--seed", type=int, default=42, help="random seed: the same seed gives byte-identical extracts (default 42)")
    p.add_argument("--start-month", default="2024-01", help="first month of history, YYYY-MM (default 2024-01)")
    p.add_argument("--end-month", default="2026-10", help="last month, YYYY-MM (default 2026-10)")
    p.add_argument("--no-surveys", action="store_true", help="deliver no survey file at all (a CRM without needs surveys)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("deliver", help="copy a generated world's extracts up to a month into the landing folder")
    _common(p, as_of=False, landing=True)
    p.add_argument("--world", type=Path, required=True, help="a folder written by needseg generate")
    p.add_argument("--through", required=True, help="last month to deliver (YYYY-MM)")
    p.set_defaults(func=cmd_deliver)

    p = sub.add_parser("ingest", help="load new landing files into raw, through the quality gate")
    _common(p, landing=True)
    p.add_argument("--source", action="append", help="only this landing source (repeatable)")
    p.add_argument("--accept-changed", action="store_true", help="load files that changed after they were loaded as new batches")
    p.add_argument("--no-fetch", action="store_true", help="do not pull API sources (mappings with an http section) first")
    p.add_argument("--list-all", action="store_true", help="list files already loaded too")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("validate", help="check new landing files against mappings and the quality gate without loading them")
    _common(p, landing=True)
    p.add_argument("--source", action="append", help="only this landing source (repeatable)")
    p.add_argument("--list-all", action="store_true", help="list files already loaded too")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("build", help="run dbt: customer features and/or the serving models")
    _common(p)
    p.add_argument(
        "--select",
        choices=["features", "serving", "all"],
        default="features",
        help="which models: the customer features, the published serving models, or both (default: features)",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("segment", help="segment customers as of a date (needs features for that date)")
    _common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("drift", help="migrations, early warnings, population changes and churn-risk alerts for a run")
    _common(p)
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser(
        "alerts",
        help="deliver churn-risk alerts to account owners (digest per owner), or send what is pending",
        description=(
            "Compose the churn-risk digests of a segmentation run (one per account owner and channel) and send "
            "everything that is due, including digests of earlier runs waiting for a retry. Re-running it sends "
            "nothing twice. Channels: NEEDSEG_SMTP_* / NEEDSEG_ALERT_WEBHOOK_URL (or the Airflow connections); "
            "the alerts.outbox table always. `needseg status` lists pending and failed digests."
        ),
    )
    _common(p, as_of=False)
    p.add_argument(
        "--as-of", type=_date, default=None, help="the segmentation run whose alerts to compose (YYYY-MM-DD; default: the latest run)"
    )
    p.add_argument(
        "--pending-only",
        action="store_true",
        help="compose nothing; only send digests that are pending and due (what the alerts DAG's timed runs do)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="first put digests that failed for good (all attempts used) back in the queue, "
        "of every run (with --as-of: of that run), and send them",
    )
    p.add_argument("--strict", action="store_true", help="exit non-zero while any digest is pending or failed")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("evaluate", help="replay a generated world and score segments and drift against its ground truth")
    _common(p, as_of=False)
    p.add_argument("--world", type=Path, help="a world written by needseg generate (default: the default demo world, generated)")
    p.add_argument("--first-month", help="first month to replay (default: the month before the world's drift window)")
    p.add_argument(
        "--no-surveys",
        action="store_true",
        help="the default world with surveys withheld (no survey file): scored against the behaviour-only supervised ceiling",
    )
    p.add_argument(
        "--suite",
        nargs="?",
        const="full",
        choices=("full", "slice"),
        help="run the evaluation suite instead of one world: 'full' (21 worlds: 7 variants x 3 seeds; about 50 CPU minutes) or "
        "'slice' (1 small world, as CI runs it); prints per figure the worst and median world and the share meeting issue 14's "
        "goals; each world's result is kept as JSON under <data-dir>/suite-<name>/ and not run again (see --rerun)",
    )
    p.add_argument("--jobs", type=int, default=1, help="with --suite: worlds run at the same time, one process each (default 1)")
    p.add_argument("--rerun", action="store_true", help="with --suite: run finished worlds again too")
    p.add_argument(
        "--variant",
        action="append",
        metavar="NAME",
        help="with --suite: only the worlds of this variant (repeatable; e.g. unequal-sizes); the table summarises those worlds only",
    )
    p.add_argument("--table-only", action="store_true", help="with --suite: run nothing, print the table of the worlds finished so far")
    p.add_argument(
        "--keep-worlds", action="store_true", help="with --suite: keep each world's extracts and warehouse (default: deleted once scored)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("docs", help="build the data-quality docs (static HTML, offline) from the kept validation results")
    _common(p, as_of=False)
    p.add_argument("--out", type=Path, help="output folder (default: <data-dir>/quality/docs)")
    p.set_defaults(func=cmd_docs)

    p = sub.add_parser("publish", help="publish the serving database and Parquet exports")
    _common(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("report", help="write the HTML segment report (charts, offline) from the serving database")
    _common(p, as_of=False)
    p.add_argument("--out", type=Path, help="file to write (default: <data-dir>/report/segment_report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dbt-docs", help="write dbt's documentation of every model and column as one offline HTML file")
    _common(p, as_of=False)
    p.add_argument("--as-of", type=_date, help="the date the models' vars describe (default: the latest segmentation run)")
    p.add_argument("--out", type=Path, help="file to write (default: <data-dir>/report/dbt_docs.html)")
    p.set_defaults(func=cmd_dbt_docs)

    p = sub.add_parser("run", help="one full cycle: ingest, features, segment, drift, serving models, publish, alerts")
    _common(p, landing=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "bench",
        help="scale benchmark: generate worlds, run a full and an incremental cycle, print figures against DuckDB and pandas",
    )
    _common(p, as_of=False)
    p.add_argument("--accounts", type=int, action="append", help="world size; repeat for several (default: 10000, 100000 and 1000000)")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format of the generated landing files")
    p.add_argument("--seed", type=int, default=7, help="random seed of the generated worlds (default 7)")
    p.add_argument("--out", type=Path, help="folder for the worlds and runs (default: <data-dir>/bench); a world is reused")
    p.add_argument("--no-peer", action="store_true", help="skip the pandas + scikit-learn peer (it holds every line in memory)")
    p.add_argument("--no-incremental", action="store_true", help="run the full cycle only")
    p.add_argument(
        "--quality",
        action="store_true",
        help="after the cycles, score the last run's segments and drift flags against the world's truth (needseg evaluate's "
        "measures; about 1-2 CPU minutes at 100k accounts)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="generate a world and run the DAGs in Airflow over monthly cycles")
    _common(p, as_of=False)
    p.add_argument("--cycles", type=int, default=3, help="monthly cycles to run (default 3; the first one loads all earlier months)")
    p.add_argument("--customers", type=int, default=1500, help="customers in the generated world (default 1500)")
    p.add_argument("--prospects", type=int, default=150, help="prospects in the generated world (default 150)")
    p.add_argument("--seed", type=int, default=42, help="the world's random seed (default 42)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("query", help="run SQL on the published serving database (read-only)")
    _common(p, as_of=False)
    p.add_argument("sql", help='a SQL query, e.g. "select * from customer_segments limit 5"')
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--limit", type=int, default=40, help="rows to show (table output)")
    p.add_argument("--width", type=int, default=200, help="table width")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser(
        "status",
        help="what is published (as-of, when, verdict), loaded and quarantined since, alert channels and outbox, last DAG runs",
    )
    _common(p, as_of=False)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("quarantine", help="list quarantined rows (file, line, column, value, reason) from the warehouse")
    _common(p, as_of=False)
    p.add_argument("--batch", help="only this batch (its id, or the beginning of it)")
    p.add_argument("--file", help="only this landing file: its path below the landing folder, its name, or a glob")
    p.add_argument(
        "--table",
        choices=["accounts", "order_lines", "support_tickets", "quotes", "survey_responses"],
        help="only rows of this input table",
    )
    p.add_argument("--source", help="only this landing source")
    p.add_argument("--reason", help="only rows whose reason contains this text (any case), e.g. 'wrong type'")
    p.add_argument("--limit", type=int, help="rows to list (default 50; 0 or --csv: all)")
    p.add_argument("--csv", action="store_true", help="CSV with every column, including the row as read (record)")
    p.add_argument("--width", type=int, default=60, help="widest column in the table output")
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("expectations", help="create or refresh the quality-gate suites from the input contract")
    _global_options(p, suppress=True)
    p.add_argument("--write", action="store_true", help="write the suites into expectations/ (keeping hand-added expectations)")
    p.set_defaults(func=cmd_expectations)

    p = sub.add_parser("dbt-manifest", help="parse the dbt project (cosmos renders the DAGs from its manifest)")
    _global_options(p, suppress=True)
    p.set_defaults(func=cmd_dbt_manifest)

    p = sub.add_parser("airflow", help="start Airflow locally with needseg's DAGs (UI on localhost; Ctrl-C stops it)")
    _global_options(p, suppress=True)
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("NEEDSEG_AIRFLOW_PORT", "8080")),
        help="port of the UI on localhost (default: $NEEDSEG_AIRFLOW_PORT or 8080)",
    )
    p.set_defaults(func=cmd_airflow)

    for name, command in sub.choices.items():
        if name in WRITER_COMMANDS:
            command.add_argument(
                "--wait", action="store_true", help="if another needseg command is writing to the data directory, wait for it"
            )
        if command.epilog is None:
            codes = INGEST_EXIT_CODES if name in INGEST_COMMANDS else EXIT_CODES
            command.epilog = f"{AS_OF_RULE}\n\n{codes}" if any(a.dest == "as_of" for a in command._actions) else codes
            command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _writer_lock(args: argparse.Namespace, argv: list[str]):
    """The data directory's writer lock for commands that write; nothing for the others."""
    import contextlib

    if args.command not in WRITER_COMMANDS:
        return contextlib.nullcontext()
    from pipelines.cycle import data_dir_lock

    command = " ".join(["needseg", *argv])
    return data_dir_lock(_settings(args).data_dir, command, wait=args.wait)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "as_of", "absent") is None and args.command not in READS_A_RUN:
        args.as_of = yesterday()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("needseg").setLevel(logging.INFO)
    try:
        with _writer_lock(args, sys.argv[1:] if argv is None else argv):
            return args.func(args)
    except NeedsegError as exc:
        print(f"needseg {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        # DuckDB out of its memory limit: the user's to fix, so a message, not a traceback
        # (duckdb is imported by the commands that use it, not here)
        from pipelines.settings import out_of_memory_hint, out_of_memory_in

        duckdb = sys.modules.get("duckdb")
        cause = out_of_memory_in(exc) if duckdb is not None else None
        if cause is None or not isinstance(cause, duckdb.Error):
            raise
        print(f"needseg {args.command}: {str(cause).splitlines()[0]}\n{out_of_memory_hint()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
