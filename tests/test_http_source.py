"""The HTTP source against a real local HTTP server: pages, retries, outages, increments,
credentials - judged by what lands in the landing folder, the watermark and raw.accounts."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from pipelines.errors import ConfigError
from pipelines.ingest.http_source import (
    HttpSourceError,
    fetch_http_sources,
    fetch_source,
    read_watermark,
)
from pipelines.ingest.loader import ingest
from pipelines.ingest.mapping import load_mapping_file, load_mappings
from pipelines.settings import load_settings
from pipelines.warehouse import open_warehouse

TOKEN = "test-token-5f2c9a"
TOKEN_ENV = "NEEDSEG_TEST_CRM_TOKEN"
AS_OF = dt.date(2026, 10, 31)
NOW = dt.datetime(2026, 11, 1, 6, 0, 0, tzinfo=dt.UTC)


def account(n: int, updated_at: str | None) -> dict:
    record = {
        "account_id": f"ACC-{n:04d}",
        "account_name": f"Ångström Verktyg {n} AB",
        "status": "customer",
        "industry": "manufacturing",
        "country": "SE",
        "employees": 10 + n,
        "annual_revenue": 1_000_000.5 + n,
        "customer_since": "2021-03-01",
        "account_owner": f"owner{n}@example.com",
        "parent_account_id": None,
    }
    if updated_at is not None:
        record["updated_at"] = updated_at
    return record


def _ts(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


class FakeCrm:
    """A CRM API: GET /v1/accounts?limit=&cursor=&updated_since= (strictly newer), bearer auth.

    `script` holds canned responses served before the normal ones, one per request:
    (status, headers, body), or None to serve that request normally.
    """

    def __init__(self):
        self.records: list[dict] = []
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def handle(self, path: str, query: dict[str, str], authorization: str | None) -> tuple[int, dict, object]:
        with self.lock:
            self.requests.append({"path": path, "query": query, "authorization": authorization, "at": time.monotonic()})
            canned = self.script.popleft() if self.script else None
        if canned is not None:
            return canned
        if authorization != f"Bearer {TOKEN}":
            return 401, {}, {"error": "invalid_token", "detail": "the bearer token is not valid"}
        if path != "/v1/accounts":
            return 404, {}, {"error": "not_found", "path": path}
        rows = self.records
        if "updated_since" in query:
            since = _ts(query["updated_since"])
            rows = [r for r in rows if "updated_at" not in r or _ts(r["updated_at"]) > since]
        limit = int(query.get("limit", 100))
        start = int(query.get("cursor", 0))
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return 200, {}, {"data": page, "next_cursor": str(start + limit) if more else None}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, headers, body = self.server.api.handle(url.path, query, self.headers.get("Authorization"))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.api = FakeCrm()
    server.api.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.api
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return load_settings(tmp_path / "data").with_overrides(mappings_dir=tmp_path / "sources")


def write_mapping(settings, source: str, http: dict) -> Path:
    settings.mappings_dir.mkdir(parents=True, exist_ok=True)
    path = settings.mappings_dir / f"{source}.yaml"
    path.write_text(yaml.safe_dump({"source": source, "http": http}, sort_keys=False))
    return path


def http_config(api: FakeCrm, **changes) -> dict:
    config = {
        "base_url": api.base_url,
        "token_env": TOKEN_ENV,
        "page_size": 3,
        "timeout_seconds": 5,
        "retry": {"max_attempts": 3, "backoff_seconds": 0.5, "max_backoff_seconds": 4},
        "endpoints": {"accounts": {"path": "/v1/accounts"}},
    }
    config.update(changes)
    return config


def mapping_of(settings, api, source="crm_api", **changes):
    return load_mapping_file(write_mapping(settings, source, http_config(api, **changes)))


def landed(settings, source="crm_api") -> list[str]:
    """Every file below the source's landing folder, dot-files included."""
    folder = settings.landing_dir / source
    return sorted(str(p.relative_to(settings.landing_dir)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def jsonl(settings, rel: str) -> list[dict]:
    return [json.loads(line) for line in (settings.landing_dir / rel).read_text(encoding="utf-8").splitlines()]


def fetch(settings, mapping, now=NOW, **kwargs):
    with open_warehouse(settings.warehouse_path) as con:
        return fetch_source(settings, mapping, con, now=now, **kwargs)


def watermark(settings, source="crm_api", table="accounts"):
    with open_warehouse(settings.warehouse_path) as con:
        return read_watermark(con, source, table)


def load(settings) -> int:
    """Ingest the landing folder; the number of rows in raw.accounts afterwards."""
    with open_warehouse(settings.warehouse_path) as con:
        report = ingest(settings, con, AS_OF, "test")
        assert report.rows_quarantined == 0, report.files
        return con.execute("select count(*) from raw.accounts").fetchone()[0]


class Recorder:
    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_every_page_lands_in_one_file_that_loads(api, settings):
    api.records = [account(n, f"2026-10-{n + 1:02d}T08:30:00Z") for n in range(8)]
    report = fetch(settings, mapping_of(settings, api))

    result = report.table("accounts")
    assert (result.records, result.pages, result.retries) == (8, 3, 0)
    assert landed(settings) == ["crm_api/accounts/accounts_20261101T060000.jsonl"] == report.files
    assert jsonl(settings, report.files[0]) == api.records
    assert [r["query"].get("cursor") for r in api.requests] == [None, "3", "6"]
    assert all(r["query"]["limit"] == "3" and "updated_since" not in r["query"] for r in api.requests)
    assert {r["authorization"] for r in api.requests} == {f"Bearer {TOKEN}"}
    assert result.watermark_before is None
    assert watermark(settings) == result.watermark_after == dt.datetime(2026, 10, 8, 8, 30)
    assert load(settings) == 8


def test_429_waits_for_retry_after_then_completes(api, settings):
    api.records = [account(n, f"2026-10-{n + 1:02d}T08:30:00") for n in range(5)]
    # the first page succeeds, the second is throttled once
    api.script.extend([None, (429, {"Retry-After": "1"}, {"error": "slow down"})])
    started = time.monotonic()
    report = fetch(settings, mapping_of(settings, api))  # the real time.sleep

    throttled, retried = api.requests[1], api.requests[2]
    assert retried["at"] - throttled["at"] >= 0.95
    assert time.monotonic() - started >= 0.95
    assert retried["query"] == throttled["query"] == {"limit": "3", "cursor": "3"}
    result = report.table("accounts")
    assert (result.records, result.pages, result.requests, result.retries, result.waited_seconds) == (5, 2, 3, 1, 1.0)
    assert [r["account_id"] for r in jsonl(settings, report.files[0])] == [r["account_id"] for r in api.records]
    assert load(settings) == 5


def test_500_is_retried_after_the_backoff(api, settings):
    api.records = [account(n, "2026-10-01T08:30:00") for n in range(4)]
    api.script.append((500, {}, {"error": "database is restarting"}))
    sleep = Recorder()
    report = fetch(settings, mapping_of(settings, api), sleep=sleep)

    assert sleep.waits == [0.5]
    assert report.table("accounts").records == 4 and len(api.requests) == 3
    assert load(settings) == 4


def test_an_outage_past_the_retry_budget_lands_nothing_and_keeps_the_watermark(api, settings):
    api.records = [account(n, f"2026-10-{n + 1:02d}T08:30:00") for n in range(4)]
    mapping = mapping_of(settings, api)
    first = fetch(settings, mapping)
    before = landed(settings)
    assert before == first.files and watermark(settings) == dt.datetime(2026, 10, 4, 8, 30)

    api.records += [account(n, f"2026-10-{n + 1:02d}T09:00:00") for n in range(4, 11)]
    # page 1 of the new records arrives, page 2 never does
    api.script.extend([None] + [(503, {}, {"error": "maintenance"})] * 3)
    sleep = Recorder()
    with pytest.raises(HttpSourceError) as caught:
        fetch(settings, mapping, now=NOW + dt.timedelta(hours=1), sleep=sleep)

    message = str(caught.value)
    assert f"GET {api.base_url}/v1/accounts (page 2)" in message
    assert "after 3 attempt(s)" in message and "HTTP 503" in message and "maintenance" in message
    assert "Nothing was loaded from crm_api" in message
    assert sleep.waits == [0.5, 1.0]
    assert landed(settings) == before  # no second file, no leftover dot-file
    assert watermark(settings) == dt.datetime(2026, 10, 4, 8, 30)


def test_connection_errors_back_off_exponentially_up_to_the_cap(settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    mapping = load_mapping_file(
        write_mapping(
            settings,
            "crm_api",
            {
                "base_url": closed,
                "token_env": TOKEN_ENV,
                "retry": {"max_attempts": 5, "backoff_seconds": 1, "max_backoff_seconds": 3},
                "endpoints": {"accounts": {"path": "/v1/accounts"}},
            },
        )
    )
    sleep = Recorder()
    with pytest.raises(HttpSourceError) as caught:
        fetch(settings, mapping, sleep=sleep)
    assert sleep.waits == [1, 2, 3, 3]
    assert "after 5 attempt(s)" in str(caught.value) and "ConnectError" in str(caught.value)
    assert landed(settings) == [] and not (settings.landing_dir / "crm_api").exists()


def test_the_next_fetch_asks_only_for_records_newer_than_the_watermark(api, settings):
    api.records = [account(n, f"2026-10-0{n + 1}T08:30:00Z") for n in range(5)]
    mapping = mapping_of(settings, api)
    first = fetch(settings, mapping)
    assert first.table("accounts").watermark_after == dt.datetime(2026, 10, 5, 8, 30)

    # two accounts change, one is new
    api.records[1] = {**api.records[1], "employees": 99, "updated_at": "2026-10-20T10:00:00Z"}
    api.records.append(account(5, "2026-10-21T11:15:00+02:00"))
    api.requests.clear()
    second = fetch(settings, mapping, now=NOW + dt.timedelta(days=1))

    assert {r["query"]["updated_since"] for r in api.requests} == {"2026-10-05T08:30:00"}
    result = second.table("accounts")
    assert result.records == 2 and result.watermark_before == dt.datetime(2026, 10, 5, 8, 30)
    assert result.watermark_after == dt.datetime(2026, 10, 21, 9, 15) == watermark(settings)  # +02:00 read as UTC
    assert [r["account_id"] for r in jsonl(settings, second.files[0])] == ["ACC-0001", "ACC-0005"]
    assert landed(settings) == ["crm_api/accounts/accounts_20261101T060000.jsonl", "crm_api/accounts/accounts_20261102T060000.jsonl"]
    assert load(settings) == 5 + 2

    # nothing new: no file, the watermark stays
    third = fetch(settings, mapping, now=NOW + dt.timedelta(days=2))
    assert third.table("accounts").records == 0 and third.files == []
    assert len(landed(settings)) == 2 and watermark(settings) == dt.datetime(2026, 10, 21, 9, 15)

    # a record without updated_at is landed but cannot move the watermark
    api.records.append(account(6, None))
    fourth = fetch(settings, mapping, now=NOW + dt.timedelta(days=3))
    assert fourth.table("accounts").records == 1 and fourth.table("accounts").records_without_watermark == 1
    assert len(landed(settings)) == 3 and watermark(settings) == dt.datetime(2026, 10, 21, 9, 15)


def test_a_missing_token_says_what_to_set(api, settings, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(HttpSourceError, match=f"no API token: set the environment variable {TOKEN_ENV}"):
        fetch(settings, mapping_of(settings, api))

    monkeypatch.delenv("AIRFLOW_CONN_NEEDSEG_TEST_CRM", raising=False)
    with pytest.raises(HttpSourceError) as caught:
        fetch(settings, mapping_of(settings, api, connection_id="needseg_test_crm"))
    message = str(caught.value)
    assert TOKEN_ENV in message and "Airflow connection 'needseg_test_crm'" in message and "isn't defined" in message
    assert api.requests == [] and landed(settings) == []


def test_token_and_host_can_come_from_an_airflow_connection(api, settings, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    port = int(api.base_url.rsplit(":", 1)[1])
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "password": TOKEN}
    monkeypatch.setenv("AIRFLOW_CONN_NEEDSEG_TEST_CRM", json.dumps(conn))
    api.records = [account(n, "2026-10-01T08:30:00") for n in range(2)]
    config = http_config(api, connection_id="needseg_test_crm")
    del config["base_url"]
    report = fetch(settings, load_mapping_file(write_mapping(settings, "crm_api", config)))
    assert report.table("accounts").records == 2
    assert api.requests[0]["authorization"] == f"Bearer {TOKEN}"


def test_401_fails_at_once_without_retrying(api, settings, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "an-expired-token")
    api.records = [account(1, "2026-10-01T08:30:00")]
    sleep = Recorder()
    with pytest.raises(HttpSourceError) as caught:
        fetch(settings, mapping_of(settings, api), sleep=sleep)
    message = str(caught.value)
    assert f"GET {api.base_url}/v1/accounts (page 1) failed with HTTP 401" in message
    assert "the bearer token is not valid" in message and TOKEN_ENV in message and "Not retried" in message
    assert "an-expired-token" not in message and "limit=" not in message
    assert len(api.requests) == 1 and sleep.waits == []
    assert landed(settings) == [] and watermark(settings) is None


def test_one_failing_table_keeps_the_whole_source_out_and_other_sources_go_on(api, settings):
    api.records = [account(n, "2026-10-01T08:30:00") for n in range(4)]
    endpoints = {"accounts": {"path": "/v1/accounts"}, "quotes": {"path": "/v1/quotes", "watermark_field": "created_at"}}
    write_mapping(settings, "crm_broken", http_config(api, endpoints=endpoints))
    write_mapping(settings, "crm_api", http_config(api))
    (settings.mappings_dir / "files_only.yaml").write_text("source: files_only\ntables: {}\n")

    with open_warehouse(settings.warehouse_path) as con, pytest.raises(HttpSourceError) as caught:
        fetch_http_sources(settings, con, load_mappings(settings.mappings_dir), now=NOW, sleep=Recorder())

    message = str(caught.value)
    assert message.startswith("1 HTTP source(s) could not be fetched; 1 other source(s) were fetched")
    assert f"crm_broken quotes: GET {api.base_url}/v1/quotes (page 1) failed with HTTP 404" in message
    assert landed(settings, "crm_broken") == []  # its accounts were read in full, yet not landed
    assert [r.source for r in caught.value.reports] == ["crm_api"]
    assert landed(settings) == ["crm_api/accounts/accounts_20261101T060000.jsonl"]
    assert watermark(settings, "crm_broken") is None and watermark(settings) == dt.datetime(2026, 10, 1, 8, 30)
    assert load(settings) == 4


def test_http_settings_are_checked(tmp_path):
    def mapping_error(http) -> str:
        path = tmp_path / "crm.yaml"
        path.write_text(yaml.safe_dump({"source": "crm", "http": http}))
        with pytest.raises(ConfigError) as caught:
            load_mapping_file(path)
        assert str(path) in str(caught.value)
        return str(caught.value)

    base = {"base_url": "https://crm.invalid/api", "token_env": TOKEN_ENV, "endpoints": {"accounts": {"path": "/v1/accounts"}}}
    assert "http: unknown setting(s) page_sise" in mapping_error({**base, "page_sise": 10})
    assert "http.retry: unknown setting(s) attempts" in mapping_error({**base, "retry": {"attempts": 3}})
    assert "http.endpoints.accounts: unknown setting(s) items" in mapping_error(
        {**base, "endpoints": {"accounts": {"path": "/a", "items": "x"}}}
    )
    assert "http.endpoints.accounts: missing required setting 'path'" in mapping_error({**base, "endpoints": {"accounts": {}}})
    assert "http.endpoints: unknown setting(s) customers" in mapping_error({**base, "endpoints": {"customers": {"path": "/c"}}})
    assert "http: missing required setting 'endpoints'" in mapping_error({k: v for k, v in base.items() if k != "endpoints"})
    assert "http: missing required setting 'token_env'" in mapping_error({k: v for k, v in base.items() if k != "token_env"})
    assert "http: missing required setting 'base_url'" in mapping_error({k: v for k, v in base.items() if k != "base_url"})
    assert "http.page_size: expected a whole number of at least 1" in mapping_error({**base, "page_size": 0})

    plain = tmp_path / "plain.yaml"
    plain.write_text("source: plain\ntables: {}\n")
    assert load_mapping_file(plain).http is None
    example = Path(__file__).resolve().parent.parent / "config" / "sources" / "examples" / "crm_api.yaml"
    assert set(load_mapping_file(example).http.endpoints) == {"accounts", "quotes"}


def test_the_watermark_table_has_the_documented_shape(settings):
    with open_warehouse(settings.warehouse_path) as con:
        columns = con.execute(
            "select column_name, data_type from duckdb_columns() where schema_name = 'meta' and table_name = 'http_watermarks'"
        ).fetchall()
    assert columns == [
        ("source", "VARCHAR"),
        ("table_name", "VARCHAR"),
        ("watermark", "TIMESTAMP"),
        ("fetched_at", "TIMESTAMP"),
        ("records", "BIGINT"),
        ("file", "VARCHAR"),
    ]
