"""Fetch sources that live behind a paginated JSON REST API into ordinary landing files.

The loader only knows files. A source whose mapping file (`config/sources/<source>.yaml`)
has an `http` section is fetched here first: every endpoint (one per contract table) is
read page by page and written as JSON Lines to

    <landing>/<source>/<table>/<table>_<UTC YYYYmmddTHHMMSS>.jsonl

which `pipelines.ingest.loader.ingest` then loads like any other file (the mapping's
`tables` section, if any, maps the API's field names onto the contract). The `http`
section itself is parsed by `pipelines.ingest.mapping` (`HttpSource`); an annotated
example is config/sources/examples/crm_api.yaml.

Rules kept here:
- **A source is fetched whole or not at all.** Records are streamed to dot-files in the
  table's folder (the loader ignores dot-files); only after every endpoint of the source
  has been read to its last page are they moved into place (`files.move_into_place`: flushed, then renamed) under their final names. Any
  failure removes the dot-files, so the landing folder holds no partial file of a source.
- **Incremental by `updated_at`.** `meta.http_watermarks` keeps, per (source, table), the
  largest `updated_at` fetched so far; the next fetch sends it as `updated_since` (ISO 8601,
  e.g. `2026-10-05T10:00:00`; timestamps with an offset are converted to UTC first). The
  watermark moves only after the files are in place, only forward, and only by records
  that carry a readable `updated_at`. An API whose filter is inclusive (>=) sends the
  boundary records again; they are kept (nothing lost) and the accounts table's
  latest-record-wins rule makes the repeat harmless. A fetch with no records writes no
  file and leaves that table's watermark row as it was. If the process dies between
  renaming the files and saving the watermark, the next fetch asks for the same records
  again: a repeat, never a gap.
- **Retries** (per request): HTTP 429, 408 and 5xx, connection errors and timeouts are
  retried up to `retry.max_attempts` attempts in all, waiting
  `backoff_seconds * 2**(n-1)` after the n-th failure (capped at `max_backoff_seconds`),
  or exactly what a `Retry-After` header asks (seconds or an HTTP date). A server that
  asks for a longer wait than `max_backoff_seconds` fails the fetch at once: waiting
  that long inside one task is worse than letting the next scheduled run try again.
  Any other 4xx (401, 403, 404...) fails at once. Either way the error
  (`HttpSourceError`) names the source, table, URL (never its query, never the token),
  status and attempts, and says that nothing was loaded.
- **Several sources** (`fetch_http_sources`): each is fetched on its own; a failing source
  does not stop the others. Once every source has been tried, one `HttpSourceError`
  lists the failed ones (its `reports` holds the reports of those that succeeded, whose
  files and watermarks are kept). The ingest step can therefore load whatever did arrive
  and still end the run red.
- **Secrets**: the bearer token comes from the environment variable named by `token_env`
  or, failing that, from the Airflow connection `connection_id` (its password); the base
  URL from `base_url_env`, `base_url` or that connection's host, in that order. The token
  is sent only as `Authorization: Bearer ...` and never logged or put in a message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx

from pipelines import clock
from pipelines.errors import NeedsegError
from pipelines.files import move_into_place
from pipelines.ingest.mapping import HttpEndpoint, HttpRetry, HttpSource, SourceMapping, load_mappings
from pipelines.settings import Settings
from pipelines.warehouse import ensure_schema, transaction

log = logging.getLogger(__name__)

# 408 is the server saying our request took too long: as transient as a 503.
RETRYABLE_STATUS = frozenset({408, 429, *range(500, 600)})
EXCERPT_CHARS = 300

Sleep = Callable[[float], None]


class HttpSourceError(NeedsegError):
    """A fetch from an HTTP source failed; nothing of that source was written or recorded."""

    def __init__(self, message: str, reports: list[FetchReport] | None = None):
        super().__init__(message)
        # With fetch_http_sources: the sources that did succeed (their files are in place).
        self.reports = reports or []


@dataclass
class TableFetch:
    table: str
    url: str  # the endpoint, without query
    records: int = 0
    pages: int = 0
    requests: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    file: str | None = None  # relative to the landing folder; None when there was nothing new
    watermark_before: dt.datetime | None = None
    watermark_after: dt.datetime | None = None
    records_without_watermark: int = 0  # records with no readable updated_at (they do not move it)
    seconds: float = 0.0


@dataclass
class FetchReport:
    source: str
    tables: list[TableFetch] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def records(self) -> int:
        return sum(t.records for t in self.tables)

    @property
    def files(self) -> list[str]:
        return [t.file for t in self.tables if t.file]

    def table(self, name: str) -> TableFetch:
        for t in self.tables:
            if t.table == name:
                return t
        raise KeyError(f"{self.source} has no endpoint for {name!r}")

    def summary(self) -> str:
        parts = []
        for t in self.tables:
            text = f"{t.table}: {t.records} record(s) in {t.pages} page(s)"
            if t.retries:
                text += f", {t.retries} retried request(s)"
            text += f" -> {t.file}" if t.file else " (nothing new, no file)"
            parts.append(text)
        return f"{self.source}: " + "; ".join(parts) + f" in {self.seconds:.1f} s"

    def as_dict(self) -> dict:
        """JSON-ready (timestamps as ISO text), e.g. for a cycle's stage detail."""
        return json.loads(json.dumps(asdict(self), default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v)))


# --- entry points --------------------------------------------------------------------


def fetch_http_sources(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    mappings: dict[str, SourceMapping] | None = None,
    *,
    sources: Iterable[str] | None = None,
    now: dt.datetime | None = None,
    sleep: Sleep = time.sleep,
) -> list[FetchReport]:
    """Fetch every source whose mapping has an `http` section (optionally only `sources`).

    Every source is tried; if any failed, raises one HttpSourceError listing them after the
    others are done, with the successful sources' reports in its `reports`.
    """
    if mappings is None:
        mappings = load_mappings(settings.mappings_dir)
    wanted = set(sources) if sources else None
    reports: list[FetchReport] = []
    failures: list[str] = []
    for name in sorted(mappings):
        mapping = mappings[name]
        if mapping.http is None or (wanted is not None and name not in wanted):
            continue
        try:
            reports.append(fetch_source(settings, mapping, con, now=now, sleep=sleep))
        except HttpSourceError as exc:
            log.error("%s", exc)
            failures.append(str(exc))
    if failures:
        fetched = f"; {len(reports)} other source(s) were fetched" if reports else ""
        raise HttpSourceError(
            f"{len(failures)} HTTP source(s) could not be fetched{fetched}:\n" + "\n".join(f"- {f}" for f in failures),
            reports=reports,
        )
    return reports


def fetch_source(
    settings: Settings,
    mapping: SourceMapping,
    con: duckdb.DuckDBPyConnection,
    now: dt.datetime | None = None,
    *,
    sleep: Sleep = time.sleep,
) -> FetchReport:
    """Fetch all endpoints of one source, land one file per table with new records, then
    advance the watermarks. `now` (UTC if naive) names the files; `sleep` waits between
    retries (tests pass a recorder)."""
    started = time.monotonic()
    http = mapping.http
    if http is None:
        raise HttpSourceError(f"{mapping.source}: {mapping.origin} has no 'http' section, so there is nothing to fetch")
    now = _utc_naive(now or clock.utc_now())
    stamp = now.strftime("%Y%m%dT%H%M%S")
    ensure_schema(con)
    base_url, token, token_origin = _resolve_access(mapping.source, http)
    report = FetchReport(mapping.source)

    staged: list[tuple[TableFetch, Path]] = []  # (result, its dot-file) per endpoint
    created: list[Path] = []  # folders this fetch made, parents first
    try:
        with httpx.Client(
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": "needseg"},
            timeout=httpx.Timeout(http.timeout_seconds),
            # httpx drops the Authorization header when a redirect leaves the origin.
            follow_redirects=True,
        ) as client:
            for endpoint in http.endpoints.values():
                folder = settings.landing_dir / mapping.source / endpoint.table
                _make_dirs(folder, created)
                temp = folder / f".{endpoint.table}_{stamp}.{uuid.uuid4().hex[:8]}.partial"
                result = TableFetch(endpoint.table, _public_url(_join(base_url, endpoint.path)))
                staged.append((result, temp))
                requester = _Requester(client, mapping.source, endpoint, http.retry, token, token_origin, sleep)
                _fetch_endpoint(con, mapping.source, http, endpoint, base_url, requester, result, temp)
        # Every endpoint was read to its last page: now, and only now, the files appear.
        for result, temp in staged:
            if result.records:
                final = _free_name(temp.parent, result.table, stamp)
                move_into_place(temp, final)
                result.file = str(final.relative_to(settings.landing_dir))
            else:
                temp.unlink()
    except OSError as exc:
        raise HttpSourceError(
            f"{mapping.source}: could not write the fetched records below {settings.landing_dir}: {exc}. "
            f"Nothing was loaded from {mapping.source}."
        ) from exc
    finally:
        for result, temp in staged:
            if result.file is None:
                temp.unlink(missing_ok=True)
        for folder in reversed(created):
            if not any(folder.iterdir()):
                folder.rmdir()  # a failed or empty fetch leaves the landing folder as it found it

    report.tables = [result for result, _ in staged]
    _save_watermarks(con, mapping.source, report, now)
    report.seconds = time.monotonic() - started
    log.info("%s", report.summary())
    return report


def read_watermark(con: duckdb.DuckDBPyConnection, source: str, table: str) -> dt.datetime | None:
    """The `updated_since` the next fetch of (source, table) sends; None: fetch everything."""
    row = con.execute("select watermark from meta.http_watermarks where source = ? and table_name = ?", [source, table]).fetchone()
    return row[0] if row else None


# --- one endpoint ----------------------------------------------------------------------


def _fetch_endpoint(
    con: duckdb.DuckDBPyConnection,
    source: str,
    http: HttpSource,
    endpoint: HttpEndpoint,
    base_url: str,
    requester: _Requester,
    result: TableFetch,
    temp: Path,
) -> None:
    """Read every page of one endpoint into `temp`, filling in `result`."""
    started = time.monotonic()
    url = _join(base_url, endpoint.path)
    result.watermark_before = read_watermark(con, source, endpoint.table)
    newest = result.watermark_before
    params: dict[str, str | int] = {}
    if endpoint.page_size_param:
        params[endpoint.page_size_param] = http.page_size
    if endpoint.updated_since_param and result.watermark_before is not None:
        params[endpoint.updated_since_param] = result.watermark_before.isoformat()
    cursor: str | None = None
    seen_cursors: set[str] = set()
    where = f"{source} {endpoint.table}: GET {result.url}"
    with temp.open("w", encoding="utf-8", newline="\n") as out:
        while True:
            page_params = dict(params)
            if cursor is not None:
                page_params[endpoint.cursor_param] = cursor
            payload = requester.get(url, page_params, page=result.pages + 1)
            result.pages += 1
            found, items = _lookup(payload, endpoint.items_field)
            if not found or not isinstance(items, (list, type(None))):
                keys = ", ".join(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
                raise HttpSourceError(
                    f"{where} (page {result.pages}): expected a list of records in '{endpoint.items_field}', "
                    f"found {'nothing' if not found else type(items).__name__} (the response has: {keys}). "
                    f"Set http.endpoints.{endpoint.table}.items_field to where the records are. Nothing was loaded from {source}."
                )
            for record in items or ():
                out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                stamp = _timestamp(record.get(endpoint.watermark_field)) if isinstance(record, dict) else None
                if stamp is None:
                    result.records_without_watermark += 1
                elif newest is None or stamp > newest:
                    newest = stamp
                result.records += 1
            _, next_cursor = _lookup(payload, endpoint.next_cursor_field)
            if next_cursor is None or next_cursor == "":
                break
            cursor = str(next_cursor)
            if cursor in seen_cursors:
                raise HttpSourceError(
                    f"{where} (page {result.pages}): the API returned the cursor {cursor!r} a second time; "
                    f"stopping rather than reading the same pages forever. Nothing was loaded from {source}."
                )
            seen_cursors.add(cursor)
    result.watermark_after = newest
    result.requests, result.retries, result.waited_seconds = requester.requests, requester.retries, requester.waited
    result.seconds = time.monotonic() - started


class _Requester:
    """GETs JSON with the retry policy, counting requests, retries and time waited."""

    def __init__(
        self,
        client: httpx.Client,
        source: str,
        endpoint: HttpEndpoint,
        retry: HttpRetry,
        token: str,
        token_origin: str,
        sleep: Sleep,
    ):
        self.client, self.source, self.endpoint, self.retry = client, source, endpoint, retry
        self.token, self.token_origin, self.sleep = token, token_origin, sleep
        self.requests = self.retries = 0
        self.waited = 0.0

    def get(self, url: str, params: dict[str, Any], page: int) -> Any:
        where = f"{self.source} {self.endpoint.table}: GET {_public_url(url)} (page {page})"
        nothing = f"Nothing was loaded from {self.source}: its landing folder and watermarks are unchanged."
        last = ""
        attempts = self.retry.max_attempts
        for attempt in range(1, attempts + 1):
            self.requests += 1
            wait = min(self.retry.backoff_seconds * 2 ** (attempt - 1), self.retry.max_backoff_seconds)
            try:
                response = self.client.get(url, params=params)
            except httpx.TransportError as exc:  # refused, reset, DNS, timeouts
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except httpx.HTTPError as exc:  # a redirect loop, an undecodable body: retrying won't help
                raise HttpSourceError(f"{where} failed: {type(exc).__name__}: {exc}. {nothing}") from exc
            else:
                status = response.status_code
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        raise HttpSourceError(
                            f"{where}: HTTP {status} but the body is not JSON: {self._excerpt(response)!r}. {nothing}"
                        ) from None
                last = f"HTTP {status} {response.reason_phrase}: {self._excerpt(response)!r}"
                if status not in RETRYABLE_STATUS:
                    raise HttpSourceError(f"{where} failed with {last}. Not retried: {self._hint(status)}. {nothing}")
                asked = _retry_after(response.headers.get("Retry-After"))
                if asked is not None:
                    if asked > self.retry.max_backoff_seconds:
                        raise HttpSourceError(
                            f"{where} failed with {last}; the server asks to retry after {asked:.0f} s, longer than "
                            f"http.retry.max_backoff_seconds ({self.retry.max_backoff_seconds:g} s) allows waiting. "
                            f"{nothing} The next run tries again."
                        )
                    wait = asked
            if attempt < attempts:
                log.warning("%s: %s (attempt %d of %d); retrying in %.1f s", where, last, attempt, attempts, wait)
                self.retries += 1
                self.waited += wait
                self.sleep(wait)
        raise HttpSourceError(f"{where} failed after {attempts} attempt(s); the last: {last}. {nothing}")

    def _excerpt(self, response: httpx.Response) -> str:
        text = " ".join(response.text.split())
        # A debugging proxy may echo the request's headers back.
        return text.replace(self.token, "***")[:EXCERPT_CHARS]

    def _hint(self, status: int) -> str:
        if status == 401:
            return f"the API refused the token; check the token in {self.token_origin}"
        if status == 403:
            return f"the token from {self.token_origin} may not read this endpoint"
        if status == 404:
            return f"check http.endpoints.{self.endpoint.table}.path and the base URL"
        return "the API rejected the request; check the endpoint's settings in the source's mapping"


# --- credentials and addresses -----------------------------------------------------------


def _resolve_access(source: str, http: HttpSource) -> tuple[str, str, str]:
    """(base URL, token, where the token came from) from the environment or Airflow."""
    lookup: list[Any] = []  # the Airflow connection, fetched at most once

    def connection() -> tuple[Any, str | None]:
        if not lookup:
            lookup.append(_airflow_connection(http.connection_id) if http.connection_id else (None, None))
        return lookup[0]

    token = _env(http.token_env)
    token_origin = f"the environment variable {http.token_env}"
    if not token and http.connection_id:
        conn, problem = connection()
        token = (getattr(conn, "password", None) or "").strip() if conn else ""
        token_origin = f"the Airflow connection {http.connection_id!r} (its password)"
    if not token:
        ways = []
        if http.token_env:
            ways.append(f"set the environment variable {http.token_env}")
        if http.connection_id:
            conn, problem = connection()
            detail = f"looking it up failed: {problem}" if problem else "it has no password"
            ways.append(f"define the Airflow connection {http.connection_id!r} with the token as its password ({detail})")
        raise HttpSourceError(f"{source}: no API token: " + ", or ".join(ways) + ". Nothing was fetched.")

    base_url = _env(http.base_url_env) or http.base_url
    if not base_url and http.connection_id:
        conn, problem = connection()
        base_url = _connection_base_url(conn) if conn else None
    if not base_url:
        ways = [f"set the environment variable {http.base_url_env}"] if http.base_url_env else []
        if http.connection_id:
            ways.append(f"give the Airflow connection {http.connection_id!r} a host")
        raise HttpSourceError(
            f"{source}: no base URL for the API: " + ", or ".join(ways or ["set http.base_url"]) + ". Nothing was fetched."
        )
    if not base_url.lower().startswith(("http://", "https://")):
        raise HttpSourceError(
            f"{source}: the API base URL {_public_url(base_url)!r} is not an http:// or https:// address. Nothing was fetched."
        )
    return base_url, token, token_origin


def _airflow_connection(conn_id: str) -> tuple[Any, str | None]:
    """(connection, None) or (None, why not). Works inside a task and, through the
    environment (AIRFLOW_CONN_<ID>) or a secrets backend, outside one."""
    try:
        from airflow.sdk import Connection

        get = Connection.get
    except ImportError:
        try:
            from airflow.hooks.base import BaseHook

            get = BaseHook.get_connection
        except ImportError:
            return None, "Airflow is not installed in this environment"
    try:
        return get(conn_id), None
    except Exception as exc:  # noqa: BLE001 - secrets backends raise anything; the message is what matters
        return None, f"{type(exc).__name__}: {exc}"


def _connection_base_url(conn: Any) -> str | None:
    """An Airflow HTTP connection keeps the scheme in `schema` and may split off the port."""
    host = (getattr(conn, "host", None) or "").strip()
    if not host:
        return None
    if "://" in host:
        return host
    scheme = next((s for s in (getattr(conn, "schema", None), getattr(conn, "conn_type", None)) if s in ("http", "https")), "https")
    netloc, _, path = host.partition("/")
    port = getattr(conn, "port", None)
    return f"{scheme}://{netloc}{f':{port}' if port else ''}{'/' + path if path else ''}"


def _env(name: str | None) -> str:
    return (os.environ.get(name) or "").strip() if name else ""


def _join(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def _public_url(url: str) -> str:
    """The URL without query, fragment or user info: safe to put in a message or a log."""
    try:
        return str(httpx.URL(url).copy_with(query=None, fragment=None, userinfo=b""))
    except (httpx.InvalidURL, TypeError, ValueError):
        return url.split("?", 1)[0].split("#", 1)[0]


# --- small helpers -----------------------------------------------------------------------


def _lookup(payload: Any, dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted field path such as `data` or `meta.next_cursor`."""
    node = payload
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _timestamp(value: Any) -> dt.datetime | None:
    """An ISO 8601 date or timestamp as naive UTC (naive input is taken as it is)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return _utc_naive(parsed)


def _utc_naive(value: dt.datetime) -> dt.datetime:
    # DuckDB's TIMESTAMP has no zone: keep UTC in it, whatever zone we were given.
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP date); None if absent/unreadable."""
    if not value or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - clock.utc_now()).total_seconds())


def _make_dirs(folder: Path, created: list[Path]) -> None:
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        candidate.mkdir(exist_ok=True)
        created.append(candidate)


def _free_name(folder: Path, table: str, stamp: str) -> Path:
    """`<table>_<stamp>.jsonl`, or with `_2`, `_3`... when two fetches share a second: an
    existing file may already be loaded and must never be overwritten."""
    candidate = folder / f"{table}_{stamp}.jsonl"
    number = 2
    while candidate.exists():
        candidate = folder / f"{table}_{stamp}_{number}.jsonl"
        number += 1
    return candidate


def _save_watermarks(con: duckdb.DuckDBPyConnection, source: str, report: FetchReport, now: dt.datetime) -> None:
    rows = [(source, t.table, t.watermark_after, now, t.records, t.file) for t in report.tables if t.file]
    if not rows:
        return
    try:
        with transaction(con):
            con.executemany(
                "insert into meta.http_watermarks (source, table_name, watermark, fetched_at, records, file) values (?, ?, ?, ?, ?, ?) "
                "on conflict (source, table_name) do update set watermark = excluded.watermark, "
                "fetched_at = excluded.fetched_at, records = excluded.records, file = excluded.file",
                rows,
            )
    except duckdb.Error as exc:
        raise HttpSourceError(
            f"{source}: the fetched files {', '.join(report.files)} are in place, but the watermark could not be saved "
            f"({exc}); the next fetch will ask for the same records again."
        ) from exc
