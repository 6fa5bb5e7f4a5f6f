"""One churn-risk digest per account owner: the subject, a plain-text and an HTML body for
e-mail, and a Slack-compatible webhook payload.

For every alert an owner needs the same five things: which account, what changed (from ->
to segment), how risky (score), why (the evidence) and what to do (the playbook action of
the segment it is moving to). Highest risk first.

Account names come from CRMs and contain anything: å/ä/ö, quotes, ampersands, even
"<script>". Every dynamic value is HTML-escaped in the HTML body and Slack-escaped
(&, <, >) in the webhook payload; the plain-text body carries it unchanged. The HTML uses
inline styles only and no images, so it reads the same in any mail client.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipelines.errors import NeedsegError

ALERT_COLUMNS = (
    "alert_id",
    "run_id",
    "as_of",
    "account_id",
    "account_name",
    "account_owner",
    "reason",
    "score",
    "from_segment",
    "to_segment",
    "evidence",
    "action",
    "is_new",
    "first_flagged_as_of",
)
# Optional: the as-of date of the latest run that flagged the alert (absent: this run).
OPTIONAL_ALERT_COLUMNS = ("last_seen_as_of",)

REASON_LABELS = {
    "drift_to_price_sensitive": "drifting towards price sensitivity",
    "leaving_partnership": "moving away from partnership",
    "migration": "changed segment",
    "lapsing": "likely to stop buying (lapsing)",
}
# A lapsing alert moves towards no segment: the account is expected to stop ordering.
LAPSING_DESTINATION = "no further orders expected"

# Slack rejects a message with more than 50 blocks or a section longer than 3,000
# characters, and truncates `text` at 40,000; stay below all three.
SLACK_MAX_ALERT_BLOCKS = 45
SLACK_SECTION_LIMIT = 3000
SLACK_TEXT_LIMIT = 38000
SLACK_HEADER_LIMIT = 150


class AlertInputError(NeedsegError):
    """The alerts handed to delivery do not have the agreed shape."""


@dataclass(frozen=True)
class Alert:
    """One open churn-risk alert of one run, as the account owner will read it."""

    alert_id: str
    run_id: str
    as_of: dt.date
    account_id: str
    account_name: str
    account_owner: str | None
    reason: str
    score: float | None
    from_segment: str
    to_segment: str
    evidence: tuple[str, ...]
    action: str
    is_new: bool
    first_flagged_as_of: dt.date | None
    last_seen_as_of: dt.date | None = None

    @property
    def flagged_this_run(self) -> bool:
        """False for an alert still open but not flagged again in this run."""
        return self.last_seen_as_of is None or self.last_seen_as_of >= self.as_of

    @property
    def reason_label(self) -> str:
        return REASON_LABELS.get(self.reason, self.reason.replace("_", " "))

    @property
    def score_text(self) -> str:
        return "n/a" if self.score is None else f"{self.score:.2f}"

    @property
    def status_text(self) -> str:
        if self.is_new:
            return "new this run"
        if not self.flagged_this_run:
            since = f"open since {self.first_flagged_as_of.isoformat()}, " if self.first_flagged_as_of else "open, "
            return since + f"last flagged {self.last_seen_as_of.isoformat()}"
        if self.first_flagged_as_of is not None:
            return f"open since {self.first_flagged_as_of.isoformat()}"
        return "still open"


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _text(value: Any) -> str:
    return "" if _missing(value) else str(value).strip()


def _date(value: Any, column: str, alert_id: str) -> dt.date | None:
    if _missing(value) or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return pd.Timestamp(value).date()
    except (TypeError, ValueError):
        raise AlertInputError(f"alert {alert_id}: {column} {value!r} is not a date (expected YYYY-MM-DD)") from None


def _score(value: Any, alert_id: str) -> float | None:
    if _missing(value):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise AlertInputError(f"alert {alert_id}: score {value!r} is not a number between 0 and 1") from None
    return None if math.isnan(score) else score


def _evidence(value: Any) -> tuple[str, ...]:
    """Evidence arrives as a list, a numpy array (from DuckDB/Parquet) or a JSON string."""
    if value is None:
        return ()
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return ()
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError:
            return (stripped,)
        value = decoded if isinstance(decoded, list) else [decoded]
    if isinstance(value, (list, tuple)):
        return tuple(text for item in value if (text := _text(item)))
    return () if _missing(value) else (str(value),)


def _flag(value: Any) -> bool:
    if _missing(value):
        return False
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "t", "y"}
    return bool(value)


def alerts_from_frame(frame: pd.DataFrame) -> list[Alert]:
    """The alerts of a DataFrame with ALERT_COLUMNS, checked; duplicates of an alert_id
    (one open alert per account and reason) keep the highest score."""
    missing = [c for c in ALERT_COLUMNS if c not in frame.columns]
    if missing:
        raise AlertInputError(f"the alerts to deliver lack column(s) {', '.join(missing)}; expected {', '.join(ALERT_COLUMNS)}")
    alerts: dict[str, Alert] = {}
    columns = list(ALERT_COLUMNS) + [c for c in OPTIONAL_ALERT_COLUMNS if c in frame.columns]
    for position, row in enumerate(frame[columns].to_dict("records"), start=1):
        alert_id = _text(row["alert_id"])
        if not alert_id:
            raise AlertInputError(f"alert row {position} has no alert_id")
        account_id = _text(row["account_id"])
        if not account_id:
            raise AlertInputError(f"alert {alert_id} has no account_id")
        run_id = _text(row["run_id"])
        as_of = _date(row["as_of"], "as_of", alert_id)
        if not run_id or as_of is None:
            raise AlertInputError(f"alert {alert_id} has no run_id or as_of")
        alert = Alert(
            alert_id=alert_id,
            run_id=run_id,
            as_of=as_of,
            account_id=account_id,
            account_name=_text(row["account_name"]) or account_id,
            account_owner=_text(row["account_owner"]) or None,
            reason=_text(row["reason"]) or "unspecified",
            score=_score(row["score"], alert_id),
            from_segment=_text(row["from_segment"]) or "(none)",
            to_segment=_text(row["to_segment"]) or (LAPSING_DESTINATION if _text(row["reason"]) == "lapsing" else "(none)"),
            evidence=_evidence(row["evidence"]),
            action=_text(row["action"]),
            is_new=_flag(row["is_new"]),
            first_flagged_as_of=_date(row["first_flagged_as_of"], "first_flagged_as_of", alert_id),
            last_seen_as_of=_date(row.get("last_seen_as_of"), "last_seen_as_of", alert_id),
        )
        kept = alerts.get(alert_id)
        if kept is None or (alert.score or 0.0) > (kept.score or 0.0):
            alerts[alert_id] = alert
    return list(alerts.values())


def by_risk(alerts: Iterable[Alert]) -> list[Alert]:
    """Highest score first; unscored last; ties by account name so the order is stable."""
    return sorted(
        alerts,
        key=lambda a: (a.score is None, -(a.score or 0.0), a.account_name.casefold(), a.account_id, a.alert_id),
    )


@dataclass(frozen=True)
class Digest:
    """What one recipient is told about one run, in every format a channel needs."""

    recipient: str
    run_id: str
    as_of: dt.date
    alerts: tuple[Alert, ...]
    fallback: bool = False
    renotify_after_days: int | None = 60
    part: int = 1  # 2, 3, ...: an addendum to the recipient's digest of this run
    subject: str = field(init=False)
    body_text: str = field(init=False)
    body_html: str = field(init=False)
    payload: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", _subject(self))
        object.__setattr__(self, "body_text", _plain_text(self))
        object.__setattr__(self, "body_html", _html(self))
        object.__setattr__(self, "payload", _webhook_payload(self))

    @property
    def account_count(self) -> int:
        return len({a.account_id for a in self.alerts})

    @property
    def alert_ids(self) -> list[str]:
        return [a.alert_id for a in self.alerts]


def compose_digest(
    recipient: str,
    alerts: Sequence[Alert],
    *,
    run_id: str,
    fallback: bool = False,
    renotify_after_days: int | None = 60,
    part: int = 1,
) -> Digest:
    """The digest for `recipient`; `fallback` marks alerts whose account has no usable owner;
    `part` > 1 makes it an addendum to the recipient's earlier digest of the same run."""
    if not alerts:
        raise ValueError(f"no alerts to compose a digest for {recipient}")
    ordered = tuple(by_risk(alerts))
    return Digest(
        recipient=recipient,
        run_id=run_id,
        as_of=max(a.as_of for a in ordered),
        alerts=ordered,
        fallback=fallback,
        renotify_after_days=renotify_after_days,
        part=part,
    )


def _accounts_phrase(n: int, more: bool = False) -> str:
    return f"{n}{' more' if more else ''} account{'s' if n != 1 else ''} at churn risk"


def _phrase(d: Digest) -> str:
    return _accounts_phrase(d.account_count, more=d.part > 1)


def _subject(d: Digest) -> str:
    addendum = f", addendum {d.part - 1}" if d.part > 1 else ""
    subject = f"needseg: {_phrase(d)} (as of {d.as_of.isoformat()}{addendum})"
    return subject + (" - no account owner set" if d.fallback else "")


def _addendum_note(d: Digest) -> str:
    return (
        f"Addendum {d.part - 1} to your needseg digest as of {d.as_of.isoformat()}: alerts that were not in "
        "the earlier message of this run (the run was repeated with new data, or an earlier message could "
        "not be delivered)."
    )


def _why_you(d: Digest) -> str:
    if d.fallback:
        return (
            "These accounts have no usable account owner in the CRM, so their alerts come to you as "
            "the fallback recipient. Set the account owner in the CRM to route them to the account team."
        )
    repeat = (
        f" An alert you were already sent is repeated about every {d.renotify_after_days} days while it stays open."
        if d.renotify_after_days is not None
        else " An alert you were already sent is not repeated while it stays open."
    )
    return "You receive this because you are the account owner in the CRM." + repeat


def _owner_note(alert: Alert) -> str:
    return f"account owner in CRM: {alert.account_owner!r}" if alert.account_owner else "no account owner in CRM"


# ----------------------------------------------------------------------------- plain text

_WRAP = 76


def _wrapped(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, width=_WRAP, initial_indent=first, subsequent_indent=rest, break_long_words=False) or [first]


def _plain_text(d: Digest) -> str:
    lines = [
        f"{_phrase(d)}, as of {d.as_of.isoformat()} (highest risk first).",
        f"For: {d.recipient}",
        "",
    ]
    if d.part > 1:
        lines += [*_wrapped(_addendum_note(d), "", ""), ""]
    if d.fallback:
        lines += [*_wrapped(_why_you(d), "", ""), ""]
    for number, alert in enumerate(d.alerts, start=1):
        lines.append(f"{number}. {alert.account_name} (account {alert.account_id})")
        lines.append(f"   {alert.from_segment} → {alert.to_segment}")
        lines.append(f"   Risk score {alert.score_text} · {alert.reason_label} · {alert.status_text}")
        if d.fallback:
            lines.append(f"   ({_owner_note(alert)})")
        if alert.evidence:
            lines.append("   Evidence:")
            for item in alert.evidence:
                lines += _wrapped(item, "   - ", "     ")
        if alert.action:
            lines += _wrapped(alert.action, "   Action: ", "           ")
        lines.append("")
    lines.append("-- ")
    if not d.fallback:
        lines += _wrapped(_why_you(d), "", "")
    lines.append(f"needseg run {d.run_id}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- HTML

_MUTED = "color:#57606a;"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _html(d: Digest) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(d.subject)}</title></head>",
        '<body style="margin:0;padding:16px;font-family:Arial,Helvetica,sans-serif;font-size:14px;'
        'line-height:1.45;color:#1f2328;background:#ffffff;">',
        f'<h1 style="font-size:18px;margin:0 0 4px;">{_e(_phrase(d))}</h1>',
        f'<p style="margin:0 0 16px;{_MUTED}">As of {_e(d.as_of.isoformat())}, highest risk first. For {_e(d.recipient)}.</p>',
    ]
    if d.part > 1:
        parts.append(f'<p style="margin:0 0 16px;">{_e(_addendum_note(d))}</p>')
    if d.fallback:
        parts.append(f'<p style="margin:0 0 16px;padding:8px;border:1px solid #d4a72c;background:#fff8c5;">{_e(_why_you(d))}</p>')
    parts.append('<ol style="margin:0;padding-left:24px;">')
    for alert in d.alerts:
        badge = (
            ' <span style="font-size:12px;padding:1px 6px;border-radius:8px;background:#cf222e;color:#ffffff;">new</span>'
            if alert.is_new
            else f' <span style="font-size:12px;{_MUTED}">{_e(alert.status_text)}</span>'
        )
        item = [
            '<li style="margin:0 0 18px;">',
            f'<div><strong>{_e(alert.account_name)}</strong> <span style="{_MUTED}">(account {_e(alert.account_id)})</span>{badge}</div>',
            f"<div>{_e(alert.from_segment)} &rarr; <strong>{_e(alert.to_segment)}</strong></div>",
            f'<div style="{_MUTED}">Risk score <strong style="color:#1f2328;">{_e(alert.score_text)}</strong>'
            f" &middot; {_e(alert.reason_label)}</div>",
        ]
        if d.fallback:
            item.append(f'<div style="{_MUTED}">{_e(_owner_note(alert))}</div>')
        if alert.evidence:
            item.append('<div style="margin-top:4px;">Evidence:</div><ul style="margin:2px 0 0;padding-left:20px;">')
            item += [f"<li>{_e(point)}</li>" for point in alert.evidence]
            item.append("</ul>")
        if alert.action:
            item.append(
                '<div style="margin-top:6px;padding:4px 8px;border-left:3px solid #0969da;background:#f6f8fa;">'
                f"<strong>Action:</strong> {_e(alert.action)}</div>"
            )
        item.append("</li>")
        parts.append("".join(item))
    parts.append("</ol>")
    if not d.fallback:
        parts.append(f'<p style="margin:16px 0 0;font-size:12px;{_MUTED}">{_e(_why_you(d))}</p>')
    parts.append(f'<p style="margin:4px 0 0;font-size:12px;{_MUTED}">needseg run {_e(d.run_id)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- Slack-compatible webhook


def slack_escape(value: object) -> str:
    """Slack's escaping for dynamic text: only &, < and > are control characters."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    """Shorten already-escaped mrkdwn without cutting an entity such as &amp; in half."""
    if len(text) <= limit:
        return text
    return re.sub(r"&[a-z]*$", "", text[: limit - 1]) + "…"


def _alert_mrkdwn(number: int, alert: Alert, fallback: bool) -> str:
    s = slack_escape
    lines = [
        f"*{number}. {s(alert.account_name)}* (account `{s(alert.account_id)}`)",
        f"{s(alert.from_segment)} → *{s(alert.to_segment)}* · risk score *{alert.score_text}* · "
        f"{s(alert.reason_label)} · _{s(alert.status_text)}_",
    ]
    if fallback:
        lines.append(f"_{s(_owner_note(alert))}_")
    lines += [f"• {s(point)}" for point in alert.evidence]
    if alert.action:
        lines.append(f">*Action:* {s(alert.action)}")
    return _clip("\n".join(lines), SLACK_SECTION_LIMIT)


def _webhook_payload(d: Digest) -> dict[str, Any]:
    heading = f"For {slack_escape(d.recipient)}, highest risk first."
    if d.part > 1:
        heading += f"\n{slack_escape(_addendum_note(d))}"
    if d.fallback:
        heading += f"\n_{slack_escape(_why_you(d))}_"
    sections = [_alert_mrkdwn(n, a, d.fallback) for n, a in enumerate(d.alerts, start=1)]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(d.subject, SLACK_HEADER_LIMIT), "emoji": False}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(heading, SLACK_SECTION_LIMIT)}},
    ]
    shown = sections[:SLACK_MAX_ALERT_BLOCKS]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": text}} for text in shown]
    if len(sections) > len(shown):
        rest = d.alerts[len(shown) :]
        names = ", ".join(f"{slack_escape(a.account_name)} ({a.score_text})" for a in rest)
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"…and {len(rest)} more: {names}", SLACK_SECTION_LIMIT)}}
        )
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"needseg run {slack_escape(d.run_id)}"}]})
    # `text` is the notification and what clients without blocks show: the whole digest.
    text = _clip("\n\n".join([f"*{slack_escape(d.subject)}*\n{heading}", *sections]), SLACK_TEXT_LIMIT)
    return {"text": text, "blocks": blocks}
