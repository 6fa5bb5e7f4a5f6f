"""The alert outbox: every digest is first written to the warehouse, then sent, so nothing is
lost when a mail server or webhook is down, and a re-run never sends a digest twice.

Tables (schema `alerts`; timestamps are UTC):

    alerts.outbox      one row per message: (run, channel, recipient, part) -> a deterministic
                       message_id, the rendered digest, its status (pending | sent | failed),
                       attempts, last_error, when the next attempt is due, and when the data
                       team was told that it failed for good.
    alerts.deliveries  one row per (alert_id, channel, run_id) once the channel accepted the
                       message that carried the alert, with that run's as-of date.

Which alerts go into a digest. `enqueue` is handed the alerts of one run (every alert open as
of it: see pipelines/alerts/deliver.py). Per channel an alert is left out when a message
still pending on the channel carries it (that message will deliver it) or when the channel
already delivered it, unless a reminder is due. Everything else goes in: new alerts, alerts
a re-run of the same interval added, alerts open but not flagged again this run that never
reached the owner, alerts whose earlier message failed for good, alerts on a newly
configured channel.

Reminders are timed by the runs' as-of dates (business time), never by the wall clock: an
alert flagged again in this run is repeated once `renotify_after_days` (less
`renotify_tolerance_days`) have passed between the as-of date of the run that last told the
owner on that channel and this run's as-of date. Month ends are 28 to 31 days apart, so the
tolerance (default 3 days) makes "60 days" mean "every second monthly run", whether the
runs happened a month or a minute apart on the wall clock, and whatever February does.

Parts. The first message of a (run, channel, recipient) is part 1; alerts that join the run
later (a re-run after upstream data changed, or alerts of a message that failed for good)
go out as an addendum, part 2, 3, ... Each part has its own deterministic message id
(part 1 keeps the id of older versions), so a retry of a part is recognised as the same
message and a re-run that adds nothing creates nothing.

What "exactly once" means here, precisely:

- In the warehouse, exactly once. `enqueue` writes a run's messages in one transaction and
  never puts an alert in a second message while the first is pending or delivered.
  Marking a message sent and recording its deliveries is one transaction, so
  `alerts.deliveries` holds each (alert, channel, run) once. DuckDB takes a file lock for
  writing, and Airflow serialises writers through the `needseg_warehouse` pool, so two
  delivery passes never interleave.
- On the wire, at least once, with an idempotency key. An attempt is recorded (attempts + 1,
  last_error "attempt N ... did not finish") before the message is handed to the channel.
  Two windows can repeat a message that already arrived: (1) the process dies, or the
  warehouse write fails, after the SMTP server or webhook accepted the message and before
  the sent-transaction commits; (2) the channel accepted the message but its answer was
  lost (timeout, connection reset after SMTP DATA or after the HTTP request was sent). The
  message then stays pending and is sent again later with the same e-mail Message-ID and
  the same HTTP Idempotency-Key. A receiver that deduplicates on them drops the repeat;
  SMTP servers and Slack incoming webhooks in general do not, so the owner may then see
  that one digest twice. An alert is never lost that way, only possibly repeated, and an
  interrupted attempt counts towards `max_attempts`, so a message that crashes the sender
  every time ends up failed instead of looping.
- Failed for good means after `max_attempts` (default 12 attempts over about 20 hours of
  backoff). The message stays in the outbox with status failed, the data team is told once
  (pipelines/alerts/deliver.py), and `needseg alerts --retry-failed` puts it back in the
  queue; otherwise the next run's digest carries its alerts.
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

from pipelines import clock
from pipelines.alerts.channels import DeliveryError, OutgoingMessage, Sender, TableSender
from pipelines.alerts.digest import Alert, alerts_from_frame, compose_digest
from pipelines.config import AlertsConfig
from pipelines.errors import ConfigError, NeedsegError
from pipelines.warehouse import ensure_schema, insert_frame, transaction

log = logging.getLogger("needseg.alerts")

CHANNELS = ("table", "email", "webhook")
DEFAULT_FALLBACK_RECIPIENT = "needseg-data-team@localhost"
INTERRUPTED = "did not finish"  # in last_error of an attempt that never recorded its outcome

_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.?[^@\s<>,;\"]*$")


# Defaults come from the typed configuration (pipelines/config.py): one place per key.
_DEFAULTS = AlertsConfig()


@dataclass(frozen=True)
class AlertOptions:
    """The `alerts:` section of config/needseg.yaml."""

    fallback_recipient: str | None = _DEFAULTS.fallback_recipient
    renotify_after_days: int | None = _DEFAULTS.renotify_after_days
    renotify_tolerance_days: int = _DEFAULTS.renotify_tolerance_days
    max_attempts: int = _DEFAULTS.max_attempts
    retry_base_seconds: float = _DEFAULTS.retry_base_seconds
    retry_max_seconds: float = _DEFAULTS.retry_max_seconds

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
        positive("renotify_tolerance_days", self.renotify_tolerance_days, allow_zero=True)
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

    def reminder_due(self, last_told_as_of: dt.date | None, as_of: dt.date) -> bool:
        """Whether a run as of `as_of` repeats an alert whose owner was last told in a run as of
        `last_told_as_of` (on the same channel). Business time only: see the module docstring."""
        if self.renotify_after_days is None or last_told_as_of is None or as_of <= last_told_as_of:
            return False
        return (as_of - last_told_as_of).days >= self.renotify_after_days - self.renotify_tolerance_days


def is_address(value: str | None) -> bool:
    return bool(value) and bool(_ADDRESS.match(value.strip()))


def utc_naive(moment: dt.datetime | None) -> dt.datetime:
    """`now` as stored: UTC without tzinfo. A naive value is taken to be UTC already."""
    if moment is None:
        return clock.utc_naive_now()
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def message_id_for(run_id: str, channel: str, recipient: str, part: int = 1) -> str:
    """The same (run, channel, recipient, part) always gives the same id: a re-run finds its
    message, a retry carries the same id. Part 1 has the id older versions gave the digest."""
    key = f"{run_id}\x1f{channel}\x1f{recipient.strip().lower()}" + (f"\x1fpart {part}" if part != 1 else "")
    return f"needseg-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


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
    part: int = 1

    def describe(self) -> str:
        alerts = f"{self.alert_count} alert{'s' if self.alert_count != 1 else ''}"
        addendum = f", addendum {self.part - 1}" if self.part > 1 else ""
        text = f"{self.channel} to {self.recipient} ({alerts}, run {self.run_id}{addendum})"
        if self.status == "pending" and self.next_attempt_at is not None:
            text += f", next attempt {self.next_attempt_at:%Y-%m-%d %H:%M} UTC"
        if self.attempts:
            text += f", {self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.last_error:
            text += f": {self.last_error}"
        return text


class AlertsUndelivered(NeedsegError):
    """Some digests are still pending or failed for good; the message lists them."""


RETRY_HINT = (
    "Nothing is lost: pending digests are retried with backoff by the alerts DAG's timed runs "
    "(NEEDSEG_ALERTS_RETRY_SCHEDULE) or `needseg alerts --pending-only`; digests that failed for good "
    "stay in alerts.outbox until `needseg alerts --retry-failed` (or the next run carries their alerts)."
)


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
    failures_reported: list[str] = field(default_factory=list)  # failed messages the data team was told about

    @property
    def complete(self) -> bool:
        return not self.pending and not self.failed

    def summary(self) -> str:
        head = f"alerts run {self.run_id}" if self.run_id else "alert delivery (pending messages only)"
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
        if self.failures_reported:
            parts.append(f"data team told about {len(self.failures_reported)} failed message(s)")
        return f"{head}: " + "; ".join(parts)

    def details(self, limit: int = 20) -> str:
        """The summary and the undelivered messages, at most `limit` of them (alerts.outbox has all)."""
        undelivered = [f"  failed: {m.describe()}" for m in self.failed] + [f"  pending: {m.describe()}" for m in self.pending]
        more = (
            [f"  ... and {len(undelivered) - limit} more (needseg status, or the table alerts.outbox)"] if len(undelivered) > limit else []
        )
        return "\n".join([self.summary(), *undelivered[:limit], *more])

    def raise_for_undelivered(self) -> None:
        """Raise AlertsUndelivered when anything is pending or failed (for an Airflow retry / alert)."""
        if not self.complete:
            raise AlertsUndelivered(f"{self.details()}\n{RETRY_HINT}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for an Airflow XCom or the CLI."""
        return json.loads(json.dumps(asdict(self) | {"summary": self.summary()}, default=str))


# ----------------------------------------------------------------------------- enqueue


@dataclass(frozen=True)
class _ChannelHistory:
    """What a channel already did with alerts, for choosing what goes into a new digest."""

    last_told: dict[str, dt.date | None]  # alert_id -> as-of date of the latest run that delivered it
    in_flight: set[str]  # carried by a message still pending
    delivered_in_run: set[tuple[str, str]]  # (alert_id, run_id)

    def due(self, alert: Alert, options: AlertOptions) -> bool:
        if alert.alert_id in self.in_flight or (alert.alert_id, alert.run_id) in self.delivered_in_run:
            return False
        if alert.alert_id not in self.last_told:
            return True
        return alert.flagged_this_run and options.reminder_due(self.last_told[alert.alert_id], alert.as_of)


def _messages_so_far(con: duckdb.DuckDBPyConnection, channel: str, run_ids: set[str]) -> dict[tuple[str, str], int]:
    """How many messages each (run, recipient) already has on `channel`: the next one's part is one more."""
    if not run_ids:
        return {}
    rows = con.execute(
        "select run_id, recipient, count(*) from alerts.outbox where channel = ? and list_contains(?, run_id) group by all",
        [channel, sorted(run_ids)],
    ).fetchall()
    return {(run_id, recipient): n for run_id, recipient, n in rows}


def _history(con: duckdb.DuckDBPyConnection, channel: str) -> _ChannelHistory:
    told = con.execute(
        """
        select d.alert_id, max(coalesce(d.as_of, o.as_of))
        from alerts.deliveries d left join alerts.outbox o on o.message_id = d.message_id
        where d.channel = ?
        group by d.alert_id
        """,
        [channel],
    ).fetchall()
    in_flight = con.execute(
        "select distinct unnest(alert_ids) from alerts.outbox where channel = ? and status = 'pending'", [channel]
    ).fetchall()
    same_run = con.execute("select alert_id, run_id from alerts.deliveries where channel = ?", [channel]).fetchall()
    return _ChannelHistory(
        last_told={alert_id: as_of for alert_id, as_of in told},
        in_flight={r[0] for r in in_flight},
        delivered_in_run={(r[0], r[1]) for r in same_run},
    )


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
    module docstring) and return the ids of the messages created: part 1 for a recipient's
    first digest of the run, an addendum (part 2, 3, ...) for alerts that joined the run
    later. All or nothing; a re-run that brings no new alert creates nothing."""
    options = AlertOptions.from_config(options)
    now = utc_naive(now)
    channels = list(dict.fromkeys(channels))
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise ConfigError(f"unknown alert channel(s) {', '.join(unknown)}; expected {', '.join(CHANNELS)}")
    ensure_schema(con)
    alerts = alerts_from_frame(alerts_df)
    fallback = options.fallback(environ)
    routed = [(alert, *route(alert.account_owner, fallback)) for alert in alerts]
    messages: list[dict[str, Any]] = []
    with transaction(con):
        for channel in channels:
            history = _history(con, channel)
            groups: dict[tuple[str, str], list[tuple[Alert, bool]]] = {}
            for alert, recipient, by_fallback in routed:
                if history.due(alert, options):
                    groups.setdefault((alert.run_id, recipient), []).append((alert, by_fallback))
            earlier = _messages_so_far(con, channel, {run_id for run_id, _ in groups})
            for (run_id, recipient), members in sorted(groups.items()):
                part = earlier.get((run_id, recipient), 0) + 1
                digest = compose_digest(
                    recipient,
                    [alert for alert, _ in members],
                    run_id=run_id,
                    fallback=all(by_fallback for _, by_fallback in members),
                    renotify_after_days=options.renotify_after_days,
                    part=part,
                )
                messages.append(
                    {
                        "message_id": message_id_for(run_id, channel, recipient, part),
                        "run_id": run_id,
                        "as_of": digest.as_of,
                        "channel": channel,
                        "recipient": recipient,
                        "alert_ids": digest.alert_ids,
                        "subject": digest.subject,
                        "body_text": digest.body_text,
                        "body_html": digest.body_html if channel != "webhook" else None,
                        "payload": json.dumps(digest.payload, ensure_ascii=False) if channel == "webhook" else None,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "part": part,
                    }
                )
                if part > 1:
                    log.info(
                        "alerts run %s: addendum %d for %s on %s with %d alert(s) the earlier digest lacks",
                        run_id,
                        part - 1,
                        recipient,
                        channel,
                        len(members),
                    )
        if messages:
            # One statement for all messages: a row-by-row insert costs DuckDB milliseconds each.
            insert_frame(con, "alerts.outbox", pd.DataFrame(messages))
    created = [m["message_id"] for m in messages]
    return created


def requeue_failed(con: duckdb.DuckDBPyConnection, now: dt.datetime | None = None, run_id: str | None = None) -> list[str]:
    """Put messages that failed for good back in the queue (after fixing the channel): every
    run's, or only `run_id`'s.

    A message is left failed if any of its alerts has reached the owner on that channel
    since, or is on its way in another pending message (a later digest or an addendum
    carries it): sending it now would repeat that alert.
    """
    now = utc_naive(now)
    ensure_schema(con)
    rows = con.execute(
        """
        select o.message_id,
               exists (select 1 from alerts.deliveries d
                       where d.channel = o.channel and list_contains(o.alert_ids, d.alert_id)
                         and d.delivered_at >= o.created_at)
               or exists (select 1 from alerts.outbox p
                          where p.channel = o.channel and p.status = 'pending' and p.message_id <> o.message_id
                            and len(list_intersect(p.alert_ids, o.alert_ids)) > 0) as overtaken
        from alerts.outbox o
        where o.status = 'failed' and (? is null or o.run_id = ?)
        order by o.created_at, o.message_id
        """,
        [run_id, run_id],
    ).fetchall()
    requeued = [message_id for message_id, overtaken in rows if not overtaken]
    for message_id, overtaken in rows:
        if overtaken:
            log.warning("message %s stays failed: another digest delivered or carries some of its alerts", message_id)
    if requeued:
        con.execute(
            """
            update alerts.outbox set status = 'pending', attempts = 0, next_attempt_at = ?, failure_notified_at = null
            where list_contains(?, message_id)
            """,
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
        part=int(row.get("part") or 1),
    )


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def _begin_attempt(con: duckdb.DuckDBPyConnection, row: dict[str, Any], now: dt.datetime) -> None:
    """Record the attempt before the message leaves: if the process dies while sending, the
    outbox shows an attempt that did not finish, and that attempt counts."""
    attempts = int(row["attempts"]) + 1
    note = (
        f"attempt {attempts} started {now:%Y-%m-%d %H:%M:%S} UTC {INTERRUPTED} (the process ended before its outcome was recorded); "
        "the message may have arrived and is sent again with the same id"
    )
    con.execute(
        "update alerts.outbox set attempts = ?, last_attempt_at = ?, last_error = ? where message_id = ?",
        [attempts, now, note, row["message_id"]],
    )
    row["attempts"] = attempts


def _mark_sent(con: duckdb.DuckDBPyConnection, rows: list[Mapping[str, Any]], now: dt.datetime, *, count_attempt: bool) -> None:
    """Sent and delivered are one fact: both or neither. `count_attempt`: the attempt was not
    recorded before the send (the table channel, where nothing travels)."""
    ids = [row["message_id"] for row in rows]
    try:
        with transaction(con):
            con.execute(
                """
                update alerts.outbox
                set status = 'sent', sent_at = ?, last_attempt_at = ?, last_error = null, next_attempt_at = null,
                    attempts = attempts + ?
                where list_contains(?, message_id)
                """,
                [now, now, 1 if count_attempt else 0, ids],
            )
            con.execute(
                """
                insert into alerts.deliveries (alert_id, channel, run_id, message_id, recipient, delivered_at, as_of)
                select unnest(alert_ids), channel, run_id, message_id, recipient, ?, as_of
                from alerts.outbox where list_contains(?, message_id)
                on conflict do nothing
                """,
                [now, ids],
            )
    except BaseException:
        log.error(
            "%d message(s) (%s) were accepted but could not be recorded as sent; they will be sent again with the same id on the next pass",
            len(ids),
            ", ".join(f"{row['channel']} to {row['recipient']}" for row in rows[:5]),
        )
        raise


def _mark_failed(
    con: duckdb.DuckDBPyConnection, row: Mapping[str, Any], error: DeliveryError, now: dt.datetime, max_attempts: int, options: AlertOptions
) -> MessageState:
    """After an attempt that failed (`row["attempts"]` already counts it)."""
    attempts = int(row["attempts"])
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


def _attempt(con: duckdb.DuckDBPyConnection, row: dict[str, Any], sender: Sender, now: dt.datetime) -> DeliveryError | None:
    """One delivery attempt of an outbox row, recorded before the send; the error, or None."""
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
    _begin_attempt(con, row, now)
    try:
        sender.send(message)
    except DeliveryError as exc:
        return exc
    except Exception as exc:
        # A sender's bug must not strand the other messages: record it like any failure.
        log.exception("sender for %s raised unexpectedly", row["channel"])
        return DeliveryError(f"{sender.describe()}: unexpected {type(exc).__name__}: {exc}")
    return None


def _hold_back(
    con: duckdb.DuckDBPyConnection,
    not_tried: list[tuple[dict[str, Any], DeliveryError]],
    down: dict[str, DeliveryError],
    now: dt.datetime,
    max_attempts: int,
    options: AlertOptions,
) -> list[MessageState]:
    """Messages held back from a channel that is down: one transaction, one log line per
    channel; the ones that used their last attempt."""
    with transaction(con):
        states = [_mark_failed(con, row, error, now, max_attempts, options) for row, error in not_tried]
    for channel, error in down.items():
        held = sum(1 for row, _ in not_tried if row["channel"] == channel)
        log.warning("%d more %s message(s) not tried in this pass: %s", held, channel, error)
    return [state for state in states if state.status == "failed"]


def deliver_pending(
    con: duckdb.DuckDBPyConnection,
    senders: Mapping[str, Sender],
    now: dt.datetime | None = None,
    max_attempts: int | None = None,
    *,
    options: AlertOptions | Mapping[str, Any] | None = None,
) -> DeliveryReport:
    """Send every pending message that is due (any run), oldest first.

    Each attempt is recorded before the send (attempts + 1). Success: sent + deliveries in
    one transaction. Failure: last_error and next_attempt_at = now + backoff; at
    `max_attempts` the message is failed and listed in the report. When a channel is
    unreachable, the rest of its messages in this pass are not tried (no hammering a server
    that is down) but count the attempt all the same, so they fail together rather than
    wait forever. A channel without a sender leaves its messages pending untouched.
    """
    options = AlertOptions.from_config(options)
    max_attempts = options.max_attempts if max_attempts is None else max_attempts
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be at least 1, not {max_attempts}")
    now = utc_naive(now)
    ensure_schema(con)
    report = DeliveryReport(channels=sorted(senders))
    due = _rows(
        con,
        """
        select * from alerts.outbox
        where status = 'pending' and (next_attempt_at is null or next_attempt_at <= ?)
        order by created_at, run_id, channel, recipient, coalesce(part, 1)
        """,
        [now],
    )

    def sent(rows: list[dict[str, Any]], count_attempt: bool) -> None:
        _mark_sent(con, rows, now, count_attempt=count_attempt)
        for row in rows:
            attempts = int(row["attempts"]) + (1 if count_attempt else 0)
            report.sent.append(_state({**row, "status": "sent", "attempts": attempts, "next_attempt_at": None, "last_error": None}))
            report.alerts_delivered[row["channel"]] = report.alerts_delivered.get(row["channel"], 0) + len(row["alert_ids"])

    # The table channel: nothing travels, so the whole batch is recorded in one transaction.
    table = [row for row in due if row["channel"] == "table" and isinstance(senders.get("table"), TableSender)]
    if table:
        sent(table, count_attempt=True)
    down: dict[str, DeliveryError] = {}
    not_tried: list[tuple[dict[str, Any], DeliveryError]] = []
    for row in due:
        sender = senders.get(row["channel"])
        if sender is None or (table and row["channel"] == "table"):
            continue
        if row["last_error"] and INTERRUPTED in row["last_error"]:
            log.warning(
                "message %s (%s to %s): its last attempt was interrupted and may have arrived; sending it again with the same id",
                row["message_id"],
                row["channel"],
                row["recipient"],
            )
        if int(row["attempts"]) >= max_attempts:
            # Interrupted attempts used up the allowance: stop rather than crash the sender again.
            error = DeliveryError(row["last_error"] or "no attempts left")
        elif row["channel"] in down:
            row["attempts"] = int(row["attempts"]) + 1
            not_tried.append(
                (row, DeliveryError(f"not tried: {sender.describe()} was unavailable earlier in this pass ({down[row['channel']]})"))
            )
            continue
        else:
            error = _attempt(con, row, sender, now)
            if error is None:
                sent([row], count_attempt=False)
                continue
            if error.channel_unavailable:
                down[row["channel"]] = error
        state = _mark_failed(con, row, error, now, max_attempts, options)
        log.warning("alert message %s: %s", "failed for good" if state.status == "failed" else "not delivered yet", state.describe())
        if state.status == "failed":
            report.failed.append(state)
    if not_tried:
        report.failed += _hold_back(con, not_tried, down, now, max_attempts, options)
    report.pending = [
        _state(r)
        for r in _rows(con, "select * from alerts.outbox where status = 'pending' order by next_attempt_at, created_at, message_id", [])
    ]
    report.waiting_for_channel = [m for m in report.pending if m.channel not in senders]
    return report


# ----------------------------------------------------------------------------- failed for good


def unreported_failures(con: duckdb.DuckDBPyConnection) -> list[MessageState]:
    """Messages that failed for good and the data team has not been told about yet."""
    ensure_schema(con)
    return [
        _state(r)
        for r in _rows(
            con,
            "select * from alerts.outbox where status = 'failed' and failure_notified_at is null order by created_at, message_id",
            [],
        )
    ]


def mark_failures_reported(con: duckdb.DuckDBPyConnection, message_ids: list[str], now: dt.datetime | None = None) -> None:
    if message_ids:
        con.execute("update alerts.outbox set failure_notified_at = ? where list_contains(?, message_id)", [utc_naive(now), message_ids])


def outbox_overview(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Lines for `needseg status` (read-only): messages by channel and status, what failed for good."""
    exists = con.execute("select count(*) from duckdb_tables() where schema_name = 'alerts' and table_name = 'outbox'").fetchone()[0]
    if not exists:
        return ["alert outbox: empty (no digest composed yet)"]
    counts = con.execute("select channel, status, count(*), sum(len(alert_ids)) from alerts.outbox group by all order by all").fetchall()
    if not counts:
        return ["alert outbox: empty (no digest composed yet)"]
    lines = ["alert outbox (messages / alerts by channel and status):"]
    lines += [f"  {channel:<8} {status:<8} {n:>6} messages {alerts:>7} alerts" for channel, status, n, alerts in counts]
    failed = _rows(con, "select * from alerts.outbox where status = 'failed' order by created_at, message_id", [])
    if failed:
        lines.append(f"  {len(failed)} message(s) FAILED for good (needseg alerts --retry-failed puts them back in the queue):")
        lines += [f"    {_state(r).describe()}" + ("" if r.get("failure_notified_at") else " [data team not told yet]") for r in failed]
    pending, due = con.execute("select count(*), min(next_attempt_at) from alerts.outbox where status = 'pending'").fetchone()
    if pending:
        when = f", next attempt due {due:%Y-%m-%d %H:%M} UTC" if due else ""
        lines.append(f"  {pending} pending{when} (needseg alerts --pending-only sends what is due)")
    return lines
