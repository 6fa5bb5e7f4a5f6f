"""The alert outbox: every digest is first written to the warehouse, then sent, so nothing is
lost when a mail server or webhook is down, and a re-run never sends a digest twice.

Tables (schema `alerts`; timestamps are UTC):

    alerts.outbox      one row per message: (run, channel, recipient) -> a deterministic
                       message_id, the rendered digest, its status (pending | sent | failed),
                       attempts, last_error and when the next attempt is due.
    alerts.deliveries  one row per (alert_id, channel, run_id) once the channel accepted
                       the message that carried the alert.

Which alerts go into a digest. An alert stays open over several runs; telling the owner
every run about the same open alert is noise. So, per channel, an alert of this run is
left out when it was delivered in this run already, when a message still pending on the
channel carries it (that message will deliver it), or when it was delivered less than
`renotify_after_days` ago (None: never repeat while open). Everything else (new alerts,
alerts whose earlier message failed for good, alerts on a newly configured channel,
reminders past the re-notify period) goes into this run's digest.

Exactly once, honestly. `enqueue` writes a run's messages in one transaction, and a
message id derived from (run_id, channel, recipient) makes a re-run insert nothing.
`deliver_pending` marks a message sent and records its deliveries in one transaction,
right after the channel accepted it. The one remaining window: the process dies (or the
warehouse write fails) after the SMTP server or webhook accepted a message and before that
transaction commits. The message then stays pending and is sent again on the next pass,
with the same e-mail Message-ID and the same HTTP Idempotency-Key, so a receiver that
deduplicates drops the repeat; a plain Slack incoming webhook does not, and the owner may
see that one digest twice. No alert is ever lost that way; it can only be repeated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import duckdb
import pandas as pd

from pipelines.alerts.channels import DeliveryError, OutgoingMessage, Sender
from pipelines.alerts.digest import Alert, alerts_from_frame, compose_digest
from pipelines.errors import ConfigError, NeedsegError
from pipelines.warehouse import ensure_table

log = logging.getLogger("needseg.alerts")

SCHEMA = "alerts"
CHANNELS = ("table", "email", "webhook")
DEFAULT_FALLBACK_RECIPIENT = "needseg-data-team@localhost"

OUTBOX_DDL = """
create table if not exists alerts.outbox (
    message_id varchar primary key,   -- deterministic from run_id, channel, recipient
    run_id varchar not null,
    as_of date,
    channel varchar not null,         -- table | email | webhook
    recipient varchar not null,       -- the account owner (or the fallback recipient)
    alert_ids varchar[] not null,
    subject varchar not null,
    body_text varchar not null,
    body_html varchar,                -- e-mail and table
    payload json,                     -- webhook: the JSON posted
    status varchar not null,          -- pending | sent | failed
    attempts integer not null,
    last_error varchar,
    next_attempt_at timestamp,
    created_at timestamp not null,
    last_attempt_at timestamp,
    sent_at timestamp
)
"""

DELIVERIES_DDL = """
create table if not exists alerts.deliveries (
    alert_id varchar not null,
    channel varchar not null,
    run_id varchar not null,
    message_id varchar not null,
    recipient varchar not null,
    delivered_at timestamp not null,
    primary key (alert_id, channel, run_id)
)
"""

_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.?[^@\s<>,;\"]*$")


@dataclass(frozen=True)
class AlertOptions:
    """The `alerts:` section of config/needseg.yaml."""

    fallback_recipient: str | None = None
    renotify_after_days: int | None = 30
    max_attempts: int = 8
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0

    @classmethod
    def from_config(cls, config: AlertOptions | Mapping[str, Any] | None) -> AlertOptions:
        """From the whole pipeline configuration (its `alerts` section) or the section itself."""
        if isinstance(config, AlertOptions):
            return config
        config = config or {}
        section = dict((config["alerts"] if "alerts" in config else config) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) alerts.{', alerts.'.join(unknown)}; expected one of {', '.join(sorted(known))}")
        options = cls(**section)
        options.validate()
        return options

    def validate(self) -> None:
        def positive(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
                raise ConfigError(f"alerts.{name} must be a positive number, not {value!r}")

        positive("renotify_after_days", self.renotify_after_days, allow_none=True, allow_zero=True)
        positive("max_attempts", self.max_attempts)
        positive("retry_base_seconds", self.retry_base_seconds)
        positive("retry_max_seconds", self.retry_max_seconds)
        if self.fallback_recipient is not None and not is_address(self.fallback_recipient):
            raise ConfigError(f"alerts.fallback_recipient {self.fallback_recipient!r} is not an e-mail address")

    def fallback(self, environ: Mapping[str, str] | None = None) -> str:
        """Who gets alerts of accounts without a usable owner: the configured fallback, else the
        data team (NEEDSEG_DATA_TEAM_EMAIL), else a local placeholder (the table still has them)."""
        environ = os.environ if environ is None else environ
        if self.fallback_recipient:
            return self.fallback_recipient.strip().lower()
        data_team = (environ.get("NEEDSEG_DATA_TEAM_EMAIL") or "").strip()
        if data_team and not is_address(data_team):
            raise ConfigError(f"NEEDSEG_DATA_TEAM_EMAIL={data_team!r} is not an e-mail address")
        return (data_team or DEFAULT_FALLBACK_RECIPIENT).lower()

    def backoff(self, attempts: int) -> dt.timedelta:
        """Wait after the `attempts`-th failed attempt: base, 2 x base, 4 x base, ... capped."""
        seconds = self.retry_base_seconds * (2 ** max(0, min(attempts - 1, 30)))
        return dt.timedelta(seconds=min(seconds, self.retry_max_seconds))


def is_address(value: str | None) -> bool:
    return bool(value) and bool(_ADDRESS.match(value.strip()))


def utc_naive(moment: dt.datetime | None) -> dt.datetime:
    """`now` as stored: UTC without tzinfo. A naive value is taken to be UTC already."""
    if moment is None:
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def ensure_alert_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create schema if not exists {SCHEMA}")
    ensure_table(con, OUTBOX_DDL)
    ensure_table(con, DELIVERIES_DDL)


def message_id_for(run_id: str, channel: str, recipient: str) -> str:
    """The same (run, channel, recipient) always gives the same id: a re-run finds its message."""
    digest = hashlib.sha256(f"{run_id}\x1f{channel}\x1f{recipient.strip().lower()}".encode()).hexdigest()
    return f"needseg-{digest[:32]}"


def route(owner: str | None, fallback: str) -> tuple[str, bool]:
    """(recipient, routed to fallback?) for an account owner as the CRM has it."""
    if owner and is_address(owner):
        return owner.strip().lower(), False
    return fallback, True


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class MessageState:
    message_id: str
    run_id: str
    channel: str
    recipient: str
    alert_count: int
    status: str
    attempts: int
    next_attempt_at: dt.datetime | None = None
    last_error: str | None = None

    def describe(self) -> str:
        text = f"{self.channel} to {self.recipient} ({self.alert_count} alert{'s' if self.alert_count != 1 else ''}, run {self.run_id})"
        if self.status == "pending" and self.next_attempt_at is not None:
            text += f", next attempt {self.next_attempt_at:%Y-%m-%d %H:%M} UTC"
        if self.attempts:
            text += f", {self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.last_error:
            text += f": {self.last_error}"
        return text


class AlertsUndelivered(NeedsegError):
    """Some digests are still pending or failed for good; the message lists them."""


@dataclass
class DeliveryReport:
    """What one delivery pass did and what is left."""

    run_id: str | None = None
    alerts_in_run: int = 0
    channels: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    sent: list[MessageState] = field(default_factory=list)
    pending: list[MessageState] = field(default_factory=list)  # all still pending after the pass
    failed: list[MessageState] = field(default_factory=list)  # failed for good in this pass
    waiting_for_channel: list[MessageState] = field(default_factory=list)  # pending, channel not configured
    alerts_delivered: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.pending and not self.failed

    def summary(self) -> str:
        head = f"alerts run {self.run_id}" if self.run_id else "alert delivery"
        parts = [f"{self.alerts_in_run} open alerts"] if self.run_id else []
        parts.append(f"{len(self.created)} messages created" + (f", {len(self.requeued)} requeued" if self.requeued else ""))
        parts.append(f"{len(self.sent)} sent")
        delivered = ", ".join(f"{channel} {count}" for channel, count in sorted(self.alerts_delivered.items()))
        parts.append(f"alerts delivered: {delivered or 'none'}")
        if self.pending:
            due = [m.next_attempt_at for m in self.pending if m.next_attempt_at is not None]
            when = f" (next attempt {min(due):%Y-%m-%d %H:%M} UTC)" if due else ""
            waiting = f", {len(self.waiting_for_channel)} waiting for an unconfigured channel" if self.waiting_for_channel else ""
            parts.append(f"{len(self.pending)} pending{when}{waiting}")
        else:
            parts.append("0 pending")
        if self.failed:
            parts.append(f"{len(self.failed)} FAILED: " + "; ".join(f"{m.channel} to {m.recipient}" for m in self.failed))
        else:
            parts.append("0 failed")
        return f"{head}: " + "; ".join(parts)

    def details(self) -> str:
        lines = [self.summary()]
        lines += [f"  failed: {m.describe()}" for m in self.failed]
        lines += [f"  pending: {m.describe()}" for m in self.pending]
        return "\n".join(lines)

    def raise_for_undelivered(self) -> None:
        """Raise AlertsUndelivered when anything is pending or failed (for an Airflow retry / alert)."""
        if not self.complete:
            raise AlertsUndelivered(self.details())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for an Airflow XCom or the CLI."""
        return json.loads(json.dumps(asdict(self) | {"summary": self.summary()}, default=str))


# ----------------------------------------------------------------------------- enqueue


def _covered(con: duckdb.DuckDBPyConnection, channel: str, now: dt.datetime, options: AlertOptions) -> tuple[set[str], set[tuple[str, str]]]:
    """Alerts that must not go into a new digest on `channel`: (by alert id, by alert id and run)."""
    if options.renotify_after_days is None:
        recent = con.execute("select distinct alert_id from alerts.deliveries where channel = ?", [channel]).fetchall()
    else:
        since = now - dt.timedelta(days=options.renotify_after_days)
        recent = con.execute(
            "select distinct alert_id from alerts.deliveries where channel = ? and delivered_at > ?", [channel, since]
        ).fetchall()
    in_flight = con.execute(
        "select distinct unnest(alert_ids) from alerts.outbox where channel = ? and status = 'pending'", [channel]
    ).fetchall()
    same_run = con.execute("select alert_id, run_id from alerts.deliveries where channel = ?", [channel]).fetchall()
    return {r[0] for r in recent} | {r[0] for r in in_flight}, {(r[0], r[1]) for r in same_run}


def enqueue(
    con: duckdb.DuckDBPyConnection,
    alerts_df: pd.DataFrame,
    channels: Iterable[str],
    now: dt.datetime | None = None,
    *,
    options: AlertOptions | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Write one digest per recipient, run and channel for the alerts that are due (see the
    module docstring) and return the ids of the messages created. All or nothing; a re-run
    creates nothing."""
    options = AlertOptions.from_config(options)
    now = utc_naive(now)
    channels = list(dict.fromkeys(channels))
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise ConfigError(f"unknown alert channel(s) {', '.join(unknown)}; expected {', '.join(CHANNELS)}")
    ensure_alert_tables(con)
    alerts = alerts_from_frame(alerts_df)
    fallback = options.fallback(environ)
    routed = [(alert, *route(alert.account_owner, fallback)) for alert in alerts]
    created: list[str] = []
    con.begin()
    try:
        for channel in channels:
            covered, covered_in_run = _covered(con, channel, now, options)
            groups: dict[tuple[str, str], list[tuple[Alert, bool]]] = {}
            for alert, recipient, by_fallback in routed:
                if alert.alert_id in covered or (alert.alert_id, alert.run_id) in covered_in_run:
                    continue
                groups.setdefault((alert.run_id, recipient), []).append((alert, by_fallback))
            for (run_id, recipient), members in sorted(groups.items()):
                message_id = message_id_for(run_id, channel, recipient)
                existing = con.execute("select status from alerts.outbox where message_id = ?", [message_id]).fetchone()
                if existing is not None:
                    # Same run, channel and recipient, but alerts the earlier message lacks
                    # (upstream changed between re-runs, or the message failed for good). A
                    # message id never gets new content; the next run picks these alerts up.
                    log.warning(
                        "alerts run %s: %s message to %s already exists (%s); %d alert(s) wait for the next run%s",
                        run_id, channel, recipient, existing[0], len(members),
                        " or requeue_failed()" if existing[0] == "failed" else "",
                    )
                    continue
                digest = compose_digest(
                    recipient,
                    [alert for alert, _ in members],
                    run_id=run_id,
                    fallback=all(by_fallback for _, by_fallback in members),
                    renotify_after_days=options.renotify_after_days,
                )
                con.execute(
                    """
                    insert into alerts.outbox (message_id, run_id, as_of, channel, recipient, alert_ids, subject,
                        body_text, body_html, payload, status, attempts, last_error, next_attempt_at, created_at,
                        last_attempt_at, sent_at)
                    values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, null, ?, ?, null, null)
                    """,
                    [
                        message_id, run_id, digest.as_of, channel, recipient, digest.alert_ids, digest.subject,
                        digest.body_text,
                        digest.body_html if channel != "webhook" else None,
                        json.dumps(digest.payload, ensure_ascii=False) if channel == "webhook" else None,
                        now, now,
                    ],
                )
                created.append(message_id)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return created


def requeue_failed(con: duckdb.DuckDBPyConnection, now: dt.datetime | None = None, run_id: str | None = None) -> list[str]:
    """Put messages that failed for good back in the queue (after fixing the channel).

    A message is left failed if any of its alerts has reached the owner on that channel
    since (a later run's digest carried it): sending it now would repeat that alert.
    """
    now = utc_naive(now)
    ensure_alert_tables(con)
    rows = con.execute(
        """
        select o.message_id,
               exists (select 1 from alerts.deliveries d
                       where d.channel = o.channel and list_contains(o.alert_ids, d.alert_id)
                         and d.delivered_at >= o.created_at) as overtaken
        from alerts.outbox o
        where o.status = 'failed' and (? is null or o.run_id = ?)
        order by o.created_at, o.message_id
        """,
        [run_id, run_id],
    ).fetchall()
    requeued = [message_id for message_id, overtaken in rows if not overtaken]
    for message_id, overtaken in rows:
        if overtaken:
            log.warning("message %s stays failed: a later digest already delivered some of its alerts", message_id)
    if requeued:
        con.execute(
            "update alerts.outbox set status = 'pending', attempts = 0, next_attempt_at = ? where list_contains(?, message_id)",
            [now, requeued],
        )
    return requeued


# ----------------------------------------------------------------------------- deliver


def _state(row: Mapping[str, Any]) -> MessageState:
    return MessageState(
        message_id=row["message_id"],
        run_id=row["run_id"],
        channel=row["channel"],
        recipient=row["recipient"],
        alert_count=len(row["alert_ids"] or []),
        status=row["status"],
        attempts=int(row["attempts"]),
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def _mark_sent(con: duckdb.DuckDBPyConnection, row: Mapping[str, Any], now: dt.datetime) -> None:
    """Sent and delivered are one fact: both or neither."""
    con.begin()
    try:
        con.execute(
            """
            update alerts.outbox
            set status = 'sent', attempts = attempts + 1, sent_at = ?, last_attempt_at = ?, next_attempt_at = null
            where message_id = ?
            """,
            [now, now, row["message_id"]],
        )
        con.executemany(
            "insert into alerts.deliveries values (?, ?, ?, ?, ?, ?) on conflict do nothing",
            [[alert_id, row["channel"], row["run_id"], row["message_id"], row["recipient"], now] for alert_id in row["alert_ids"]],
        )
        con.commit()
    except BaseException:
        con.rollback()
        log.error(
            "message %s (%s to %s) was accepted by the channel but could not be recorded as sent; "
            "it will be sent again with the same id on the next pass",
            row["message_id"], row["channel"], row["recipient"],
        )
        raise


def _mark_failed(
    con: duckdb.DuckDBPyConnection, row: Mapping[str, Any], error: DeliveryError, now: dt.datetime, max_attempts: int, options: AlertOptions
) -> MessageState:
    attempts = int(row["attempts"]) + 1
    if attempts >= max_attempts:
        status, next_attempt_at = "failed", None
    else:
        wait = options.backoff(attempts)
        if error.retry_after_seconds is not None:
            wait = max(wait, dt.timedelta(seconds=error.retry_after_seconds))
        status, next_attempt_at = "pending", now + wait
    con.execute(
        """
        update alerts.outbox
        set status = ?, attempts = ?, last_error = ?, last_attempt_at = ?, next_attempt_at = ?
        where message_id = ?
        """,
        [status, attempts, str(error), now, next_attempt_at, row["message_id"]],
    )
    return _state({**row, "status": status, "attempts": attempts, "next_attempt_at": next_attempt_at, "last_error": str(error)})


def deliver_pending(
    con: duckdb.DuckDBPyConnection,
    senders: Mapping[str, Sender],
    now: dt.datetime | None = None,
    max_attempts: int | None = None,
    *,
    options: AlertOptions | Mapping[str, Any] | None = None,
) -> DeliveryReport:
    """Send every pending message that is due (any run), oldest first.

    Success: sent + deliveries in one transaction. Failure: attempts + 1, last_error, and
    next_attempt_at = now + backoff; at `max_attempts` the message is failed and listed in
    the report. When a channel is unreachable, the rest of its messages in this pass are
    not tried (no hammering a server that is down) but count the attempt all the same, so
    they fail together rather than wait forever. A channel without a sender leaves its
    messages pending untouched.
    """
    options = AlertOptions.from_config(options)
    max_attempts = options.max_attempts if max_attempts is None else max_attempts
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be at least 1, not {max_attempts}")
    now = utc_naive(now)
    ensure_alert_tables(con)
    report = DeliveryReport(channels=sorted(senders))
    due = _rows(
        con,
        """
        select * from alerts.outbox
        where status = 'pending' and (next_attempt_at is null or next_attempt_at <= ?)
        order by created_at, run_id, channel, recipient
        """,
        [now],
    )
    down: dict[str, DeliveryError] = {}
    for row in due:
        sender = senders.get(row["channel"])
        if sender is None:
            continue
        if row["channel"] in down:
            error = DeliveryError(f"not tried: {sender.describe()} was unavailable earlier in this pass ({down[row['channel']]})")
        else:
            message = OutgoingMessage(
                message_id=row["message_id"],
                run_id=row["run_id"],
                channel=row["channel"],
                recipient=row["recipient"],
                subject=row["subject"],
                body_text=row["body_text"],
                body_html=row["body_html"] or "",
                payload=json.loads(row["payload"]) if row["payload"] else {},
                alert_ids=tuple(row["alert_ids"]),
            )
            try:
                sender.send(message)
            except DeliveryError as exc:
                error = exc
                if exc.channel_unavailable:
                    down[row["channel"]] = exc
            except Exception as exc:
                # A sender's bug must not strand the other messages: record it like any failure.
                log.exception("sender for %s raised unexpectedly", row["channel"])
                error = DeliveryError(f"{sender.describe()}: unexpected {type(exc).__name__}: {exc}")
            else:
                _mark_sent(con, row, now)
                report.sent.append(_state({**row, "status": "sent", "attempts": int(row["attempts"]) + 1, "next_attempt_at": None}))
                report.alerts_delivered[row["channel"]] = report.alerts_delivered.get(row["channel"], 0) + len(row["alert_ids"])
                continue
        state = _mark_failed(con, row, error, now, max_attempts, options)
        log.warning("alert message %s: %s", "failed for good" if state.status == "failed" else "not delivered yet", state.describe())
        if state.status == "failed":
            report.failed.append(state)
    report.pending = [
        _state(r)
        for r in _rows(con, "select * from alerts.outbox where status = 'pending' order by next_attempt_at, created_at, message_id", [])
    ]
    report.waiting_for_channel = [m for m in report.pending if m.channel not in senders]
    return report
