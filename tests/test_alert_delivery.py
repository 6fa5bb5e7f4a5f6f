"""Churn-risk alert delivery against real servers on 127.0.0.1: an aiosmtpd SMTP server and
a stdlib HTTP server standing in for a Slack-compatible webhook.

What an account owner cares about: one digest per run with exactly their accounts, highest
risk first, with what changed, the evidence and the action; nothing lost in an outage and
nothing repeated after it; no repeat of an alert they already have; names shown as written.
Time is injected (`now`), never slept.
"""

from __future__ import annotations

import datetime as dt
import email
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from pipelines import notify
from pipelines.alerts import deliver_pending, deliver_run
from pipelines.alerts.channels import TableSender, configured_senders, message_id_header
from pipelines.alerts.deliver import deliver_due
from pipelines.alerts.outbox import AlertOptions, AlertsUndelivered, message_id_for, requeue_failed
from pipelines.errors import ConfigError
from pipelines.warehouse import open_warehouse
from tests.loopback import LoopbackSmtp, LoopbackWebhook

T0 = dt.datetime(2026, 11, 1, 6, 0)
RUN = "seg-2026-10-31"
ANNA = "anna.berg@example.com"
BO = "bo.lind@example.com"


@pytest.fixture
def smtp():
    server = LoopbackSmtp()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def webhook():
    server = LoopbackWebhook()
    yield server
    server.stop()


@pytest.fixture
def con(tmp_path):
    with open_warehouse(tmp_path / "warehouse.duckdb") as connection:
        yield connection


@pytest.fixture
def senders(smtp, webhook):
    return {"table": TableSender(), "email": smtp.sender(), "webhook": webhook.sender()}


def alert(account_id: str, owner: str | None, score: float, run_id: str = RUN, **overrides) -> dict:
    row = {
        "alert_id": f"{account_id}:{overrides.get('reason', 'drift_to_price_sensitive')}",
        "run_id": run_id,
        "as_of": dt.date.fromisoformat(run_id.removeprefix("seg-")),
        "account_id": account_id,
        "account_name": f"Account {account_id} AB",
        "account_owner": owner,
        "reason": "drift_to_price_sensitive",
        "score": score,
        "from_segment": "Loyalty & partnership",
        "to_segment": "Price-focused",
        "evidence": [f"discount depth 9 % → 17 % over 3 months ({account_id})", "2 of 3 quotes lost on price"],
        "action": f"Offer a fixed-price volume agreement to {account_id}",
        "is_new": True,
        "first_flagged_as_of": dt.date(2026, 10, 31),
    }
    row.update(overrides)
    return row


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


FIVE_ALERTS = (
    alert("A-1", ANNA, 0.62),
    alert("A-2", ANNA, 0.91, from_segment="Service-focused", evidence=json.dumps(["tickets per order 0.4 → 0.1"])),
    alert("B-1", BO, 0.55, reason="leaving_partnership", to_segment="Quality & brand"),
    alert("A-3", ANNA, 0.77),
    alert("B-2", BO, 0.83),
)


def evidence_of(row: dict) -> list[str]:
    evidence = row["evidence"]
    return json.loads(evidence) if isinstance(evidence, str) else evidence


def text_part(message: email.message.EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_part(message: email.message.EmailMessage) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def deliveries(con, channel: str) -> list[tuple[str, str]]:
    return con.execute("select alert_id, run_id from alerts.deliveries where channel = ? order by 1, 2", [channel]).fetchall()


def test_one_digest_per_owner_with_their_accounts_by_risk(con, smtp, webhook, senders):
    report = deliver_run(con, frame(*FIVE_ALERTS), RUN, now=T0, senders=senders)

    assert len(smtp.received) == 2 and len(webhook.posts) == 2
    assert report.complete and len(report.sent) == 6  # 2 owners x (email, webhook, table)
    assert report.alerts_delivered == {"email": 5, "table": 5, "webhook": 5}

    expected = {ANNA: ["A-2", "A-3", "A-1"], BO: ["B-2", "B-1"]}  # highest score first
    for owner, accounts in expected.items():
        others = [a for o, acc in expected.items() if o != owner for a in acc]
        (mail,) = smtp.to(owner)
        assert mail["Subject"] == f"needseg: {len(accounts)} accounts at churn risk (as of 2026-10-31)"
        assert mail["From"] == "needseg <alerts@example.com>"
        body = text_part(mail)
        (post,) = webhook.for_recipient(owner)
        slack = post["json"]["text"]
        for rendered in (body, html_part(mail), slack):
            positions = [rendered.index(f"Account {a} AB") for a in accounts]
            assert positions == sorted(positions), f"{owner}: accounts not ordered by score"
            assert not any(f"Account {a} AB" in rendered for a in others)
            for row in (r for r in FIVE_ALERTS if r["account_id"] in accounts):
                assert f"Offer a fixed-price volume agreement to {row['account_id']}" in rendered
                assert all(point in rendered for point in evidence_of(row))
        assert post["json"]["blocks"][0]["type"] == "header"
        assert len(post["json"]["blocks"]) <= 50
    anna_text = text_part(smtp.to(ANNA)[0])
    assert "Service-focused → Price-focused" in anna_text and "tickets per order 0.4 → 0.1" in anna_text  # JSON evidence
    assert "Risk score 0.91" in anna_text
    bo_text = text_part(smtp.to(BO)[0])
    assert "Loyalty & partnership → Quality & brand" in bo_text and "moving away from partnership" in bo_text

    # The table says so: one delivery per alert and channel, and the wire ids match the outbox.
    for channel in ("table", "email", "webhook"):
        assert deliveries(con, channel) == sorted((a["alert_id"], RUN) for a in FIVE_ALERTS)
    ids = dict(con.execute("select recipient || '/' || channel, message_id from alerts.outbox").fetchall())
    assert smtp.to(ANNA)[0]["Message-ID"] == message_id_header(ids[f"{ANNA}/email"])
    assert webhook.for_recipient(BO)[0]["headers"]["Idempotency-Key"] == ids[f"{BO}/webhook"]
    assert "0 pending; 0 failed" in report.summary()


def test_outage_then_recovery_loses_nothing_and_repeats_nothing(con, smtp, webhook, senders):
    smtp.stop()
    webhook.fail_next(3)
    report = deliver_run(con, frame(*FIVE_ALERTS), RUN, now=T0, senders=senders)
    assert report.alerts_delivered == {"table": 5}
    assert len(report.pending) == 4 and not report.failed
    assert "127.0.0.1" in report.pending[0].last_error
    # The webhook answered 503 once; its second digest was not tried against a server that is down.
    assert len(webhook.refused) == 1 and not webhook.posts
    first_key = webhook.refused[0]["headers"]["Idempotency-Key"]

    # Not due yet (first retry after 60 s): nothing is attempted.
    early = deliver_pending(con, senders, now=T0 + dt.timedelta(seconds=30))
    assert not early.sent and len(webhook.refused) == 1
    assert {m.attempts for m in early.pending} == {1}

    # Due, still down: a second attempt, the wait doubles.
    second = deliver_pending(con, senders, now=T0 + dt.timedelta(seconds=61))
    assert not second.sent and {m.attempts for m in second.pending} == {2}
    assert {m.next_attempt_at for m in second.pending} == {T0 + dt.timedelta(seconds=61 + 120)}

    smtp.start()
    third = deliver_pending(con, senders, now=T0 + dt.timedelta(seconds=181))
    assert third.alerts_delivered == {"email": 5}  # the webhook answered its last 503
    fourth = deliver_pending(con, senders, now=T0 + dt.timedelta(seconds=181 + 240))
    assert fourth.alerts_delivered == {"webhook": 5} and fourth.complete

    # Exactly once at the servers: one e-mail and one post per owner, every alert in one.
    assert sorted(r[0] for r, _ in smtp.received) == [ANNA, BO]
    assert len(webhook.posts) == 2 and webhook.fail_remaining == 0
    mailed = " ".join(text_part(m) for _, m in smtp.received)
    posted = " ".join(p["json"]["text"] for p in webhook.posts)
    for row in FIVE_ALERTS:
        assert mailed.count(f"Account {row['account_id']} AB") == 1
        assert posted.count(f"Account {row['account_id']} AB") == 1
    for channel in ("email", "webhook"):
        assert len(deliveries(con, channel)) == 5
    # Every attempt carried the same idempotency key.
    assert first_key in {p["headers"]["Idempotency-Key"] for p in webhook.posts}

    # Nothing more to send.
    later = deliver_run(con, frame(*FIVE_ALERTS), RUN, now=T0 + dt.timedelta(hours=2), senders=senders)
    assert not later.created and not later.sent and len(smtp.received) == 2 and len(webhook.posts) == 2


def test_rerun_and_next_run_send_only_what_is_new(con, smtp, webhook, senders):
    deliver_run(con, frame(*FIVE_ALERTS), RUN, now=T0, senders=senders)
    assert len(smtp.received) == 2 and len(webhook.posts) == 2

    again = deliver_run(con, frame(*FIVE_ALERTS), RUN, now=T0 + dt.timedelta(minutes=5), senders=senders)
    assert not again.created and not again.sent
    assert con.execute("select count(*) from alerts.outbox").fetchone()[0] == 6

    # Next month: the same alerts are still open (not new any more) plus one new one for Anna.
    next_run = "seg-2026-11-30"
    still_open = [
        alert(
            r["account_id"], r["account_owner"], r["score"], run_id=next_run, is_new=False, reason=r["reason"], to_segment=r["to_segment"]
        )
        for r in FIVE_ALERTS
    ]
    new = alert("A-9", ANNA, 0.70, run_id=next_run)
    report = deliver_run(con, frame(*still_open, new), next_run, now=T0 + dt.timedelta(days=29), senders=senders)
    assert report.alerts_delivered == {"email": 1, "table": 1, "webhook": 1}
    assert len(smtp.received) == 3 and len(webhook.posts) == 3
    (latest,) = smtp.to(ANNA)[1:]
    assert latest["Subject"] == "needseg: 1 account at churn risk (as of 2026-11-30)"
    assert "Account A-9 AB" in text_part(latest) and "Account A-2 AB" not in text_part(latest)
    assert not smtp.to(BO)[1:]

    # Past renotify_after_days (30) the still-open alerts are repeated once, as a reminder.
    third_run = "seg-2026-12-31"
    reminder = [alert(r["account_id"], r["account_owner"], r["score"], run_id=third_run, is_new=False) for r in FIVE_ALERTS[:2]]
    report = deliver_run(con, frame(*reminder), third_run, now=T0 + dt.timedelta(days=31), senders=senders)
    assert report.alerts_delivered["email"] == 2
    (reminded,) = smtp.to(ANNA)[2:]
    assert "open since 2026-10-31" in text_part(reminded)


def test_names_are_escaped_for_html_and_slack_and_intact_in_plain_text(con, smtp, webhook, senders):
    name = '<script>alert(1)</script> & Söner "AB"'
    row = alert("X-1", ANNA, 0.9, account_name=name, evidence=["net price < list price & falling"], action='Call "today" <now>')
    deliver_run(con, frame(row), RUN, now=T0, senders=senders)

    (mail,) = smtp.received
    html = html_part(mail[1])
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Söner &quot;AB&quot;" in html
    assert "net price &lt; list price &amp; falling" in html and "Call &quot;today&quot; &lt;now&gt;" in html
    assert "<script>" not in html
    assert name in text_part(mail[1]) and "net price < list price & falling" in text_part(mail[1])

    (post,) = webhook.posts
    slack_name = '&lt;script&gt;alert(1)&lt;/script&gt; &amp; Söner "AB"'
    assert slack_name in post["json"]["text"]
    assert "<script>" not in json.dumps(post["json"], ensure_ascii=False)
    assert any(slack_name in block.get("text", {}).get("text", "") for block in post["json"]["blocks"])


def test_alerts_without_a_usable_owner_go_to_the_fallback_recipient(con, smtp, webhook, senders):
    rows = [alert("N-1", None, 0.8), alert("N-2", "not an address", 0.7), alert("A-1", ANNA, 0.6)]
    config = {"alerts": {"fallback_recipient": "data-team@example.com"}}
    deliver_run(con, frame(*rows), RUN, now=T0, senders=senders, config=config)

    (fallback,) = smtp.to("data-team@example.com")
    assert fallback["Subject"].endswith("- no account owner set")
    body = text_part(fallback)
    assert "Account N-1 AB" in body and "Account N-2 AB" in body and "Account A-1 AB" not in body
    assert "no usable account owner in the CRM" in body and "'not an address'" in body
    assert "Account A-1 AB" in text_part(smtp.to(ANNA)[0])
    assert len(webhook.for_recipient("data-team@example.com")) == 1


def test_after_max_attempts_the_message_fails_is_reported_and_is_not_lost(con, smtp, senders):
    smtp.stop()
    config = {"alerts": {"max_attempts": 3, "retry_base_seconds": 10, "retry_max_seconds": 15}}
    row = alert("A-1", ANNA, 0.8)
    email_only = {"email": senders["email"]}
    first = deliver_run(con, frame(row), RUN, now=T0, senders=email_only, config=config)
    assert not first.failed and first.pending[0].next_attempt_at == T0 + dt.timedelta(seconds=10)
    second = deliver_pending(con, email_only, now=T0 + dt.timedelta(seconds=10), options=config)
    assert second.pending[0].next_attempt_at == T0 + dt.timedelta(seconds=25)  # 20 s capped at 15
    third = deliver_pending(con, email_only, now=T0 + dt.timedelta(seconds=25), options=config)

    (failed,) = third.failed
    assert failed.status == "failed" and failed.attempts == 3 and failed.recipient == ANNA
    assert f"127.0.0.1:{smtp.port}" in failed.last_error and ANNA in failed.last_error
    assert not third.pending and f"1 FAILED: email to {ANNA}" in third.summary()
    with pytest.raises(AlertsUndelivered, match=ANNA):
        third.raise_for_undelivered()
    assert con.execute("select status, attempts from alerts.outbox").fetchall() == [("failed", 3)]

    # The data team fixes the server and requeues; the alert arrives once.
    smtp.start()
    assert len(requeue_failed(con, now=T0 + dt.timedelta(hours=1), run_id=RUN)) == 1
    fixed = deliver_pending(con, email_only, now=T0 + dt.timedelta(hours=1), options=config)
    assert fixed.alerts_delivered == {"email": 1} and len(smtp.received) == 1


def test_a_failed_alert_is_carried_by_the_next_run(con, smtp, senders):
    smtp.stop()
    email_only = {"email": senders["email"]}
    deliver_run(con, frame(alert("A-1", ANNA, 0.8)), RUN, now=T0, senders=email_only, config={"max_attempts": 1})
    assert con.execute("select status from alerts.outbox").fetchall() == [("failed",)]
    smtp.start()
    next_run = "seg-2026-11-30"
    report = deliver_run(
        con, frame(alert("A-1", ANNA, 0.8, run_id=next_run, is_new=False)), next_run, now=T0 + dt.timedelta(days=30), senders=email_only
    )
    assert report.alerts_delivered == {"email": 1} and len(smtp.received) == 1


def test_a_failed_digest_recomposed_by_a_rerun_is_not_requeued_as_well(con, smtp, senders):
    """Failed for good, then a re-run of the run carries its alert in an addendum: requeueing
    the failed part 1 too would send the alert twice."""
    email_only = {"email": senders["email"]}
    smtp.stop()
    deliver_run(con, frame(alert("A-1", ANNA, 0.8)), RUN, now=T0, senders=email_only, config={"max_attempts": 1})
    again = deliver_run(con, frame(alert("A-1", ANNA, 0.8)), RUN, now=T0 + dt.timedelta(minutes=5), senders=email_only)
    assert again.created == [message_id_for(RUN, "email", ANNA, part=2)] and len(again.pending) == 1
    smtp.start()
    assert requeue_failed(con, now=T0 + dt.timedelta(minutes=10)) == []
    deliver_pending(con, email_only, now=T0 + dt.timedelta(minutes=10))
    (mail,) = smtp.received
    assert "Account A-1 AB" in text_part(mail[1]) and "addendum 1" in mail[1]["Subject"]


def test_smtp_login_and_webhook_http_errors_name_the_server(con, webhook):
    server = LoopbackSmtp()
    logins = []

    def authenticator(server_, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"right", handled=False)

    server.start(authenticator=authenticator, auth_require_tls=False)
    try:
        good = server.sender(username="needseg", password="right")
        deliver_run(con, frame(alert("A-1", ANNA, 0.8)), RUN, now=T0, senders={"email": good})
        assert len(server.received) == 1 and logins[-1] == (b"needseg", b"right")
        bad = server.sender(username="needseg", password="wrong")
        report = deliver_run(
            con,
            frame(alert("A-2", ANNA, 0.8, run_id="seg-2026-11-30")),
            "seg-2026-11-30",
            now=T0 + dt.timedelta(days=30),
            senders={"email": bad},
        )
        assert "refused the login of user 'needseg'" in report.pending[0].last_error
        assert "wrong" not in report.pending[0].last_error
    finally:
        server.stop()

    webhook.fail_next(1, status=404)
    report = deliver_run(con, frame(alert("B-1", BO, 0.8)), RUN, now=T0, senders={"webhook": webhook.sender()})
    error = report.pending[0].last_error
    assert "HTTP 404" in error and f"127.0.0.1:{webhook.port}" in error and BO in error
    assert "s3cr3t" not in error  # the webhook path is the secret


def test_the_configuration_defaults_are_the_delivery_defaults():
    from pipelines.config import DEFAULTS, load_config
    from pipelines.settings import load_settings

    assert AlertOptions.from_config(DEFAULTS) == AlertOptions()
    assert AlertOptions.from_config(load_config(load_settings().config_path)) == AlertOptions()


def test_channels_are_off_unless_configured(monkeypatch):
    assert set(configured_senders({}, use_airflow_connections=False)) == {"table"}
    senders = configured_senders(
        {
            "NEEDSEG_SMTP_HOST": "mail.example.com",
            "NEEDSEG_SMTP_STARTTLS": "true",
            "NEEDSEG_ALERT_WEBHOOK_URL": "https://hooks.example.com/x",
        },
        use_airflow_connections=False,
    )
    email_sender = senders["email"]
    assert (email_sender.port, email_sender.sender, email_sender.starttls) == (25, "needseg@localhost", True)
    assert senders["webhook"].describe() == "webhook https://hooks.example.com/…"
    with pytest.raises(ConfigError, match="NEEDSEG_SMTP_PORT"):
        configured_senders({"NEEDSEG_SMTP_HOST": "x", "NEEDSEG_SMTP_PORT": "twenty-five"}, use_airflow_connections=False)

    # Inside Airflow, the connections stand in for absent variables; a missing one is "off".
    smtp_conn = {
        "conn_type": "smtp",
        "host": "smtp.example.com",
        "port": 587,
        "login": "bot",
        "password": "pw-123456",
        "extra": {"from_email": "needseg@example.com", "disable_tls": False},
    }
    monkeypatch.setenv("AIRFLOW_CONN_NEEDSEG_SMTP", json.dumps(smtp_conn))
    monkeypatch.delenv("AIRFLOW_CONN_NEEDSEG_ALERT_WEBHOOK", raising=False)
    senders = configured_senders({}, use_airflow_connections=True)
    assert set(senders) == {"table", "email"}
    assert (senders["email"].host, senders["email"].port, senders["email"].username, senders["email"].starttls) == (
        "smtp.example.com",
        587,
        "bot",
        True,
    )
    assert senders["email"].sender == "needseg@example.com"


def test_dag_failure_notice_reaches_the_data_team(monkeypatch, smtp, webhook):
    monkeypatch.setenv("NEEDSEG_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("NEEDSEG_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("NEEDSEG_DATA_TEAM_EMAIL", "data-team@example.com")
    monkeypatch.setenv("NEEDSEG_ALERT_WEBHOOK_URL", webhook.url)
    context = {
        "dag_run": SimpleNamespace(dag_id="needseg_segmentation", run_id="scheduled__2026-10-31"),
        "task_instance": SimpleNamespace(task_id="segment", dag_id="needseg_segmentation", run_id="scheduled__2026-10-31"),
        "reason": "task_failure",
    }
    message = notify.dag_failed(context)
    assert message == "needseg: DAG needseg_segmentation run scheduled__2026-10-31 failed (task segment): task_failure"
    (mail,) = smtp.to("data-team@example.com")
    assert mail["Subject"] == "needseg: DAG needseg_segmentation failed (run scheduled__2026-10-31)"
    assert message in mail.get_content()
    (post,) = webhook.posts
    assert "needseg_segmentation" in post["json"]["text"] and post["headers"]["Idempotency-Key"].startswith("needseg-notice-")

    # Without a task instance Airflow hands the callback only the DAG, the run id and the reason.
    minimal = {"dag": SimpleNamespace(dag_id="needseg_alerts"), "run_id": "asset_triggered__2026-11-01", "reason": "timed_out"}
    assert notify.dag_failed(minimal) == "needseg: DAG needseg_alerts run asset_triggered__2026-11-01 failed: timed_out"
    (mail,) = smtp.to("data-team@example.com")[1:]
    assert mail["Subject"] == "needseg: DAG needseg_alerts failed (run asset_triggered__2026-11-01)"
    assert "/dags/needseg_alerts/runs/asset_triggered__2026-11-01" in mail.get_content()

    # Channels down: logged, never raised.
    smtp.stop()
    webhook.stop()
    assert notify.dag_failed(context) == message
    smtp.start()


# ----------------------------------------------------------------------------- alerts that join a run late


def episode(alert_id: str, owner: str, opened: dt.date, last_seen: dt.date, status: str = "open") -> dict:
    """A row of alerts.churn_risk_alerts as the drift step writes it."""
    return {
        "alert_id": alert_id,
        "account_id": f"acc-{alert_id}",
        "reason": "drift_to_price_sensitive",
        "status": status,
        "opened_run_id": f"seg-{opened}",
        "opened_as_of": opened,
        "last_seen_run_id": f"seg-{last_seen}",
        "last_seen_as_of": last_seen,
        "resolved_as_of": None if status == "open" else last_seen,
        "runs_flagged": 1,
        "score": 0.8,
        "peak_score": 0.8,
        "account_name": f"Account {alert_id} AB",
        "account_owner": owner,
        "from_segment": "Loyalty & partnership",
        "to_segment": "Price-focused",
        "evidence": json.dumps([f"discount depth up ({alert_id})"]),
        "action": f"Call about {alert_id}",
    }


def drift_wrote(con, *rows: dict) -> None:
    """What a drift run leaves: the alert episodes, replaced whole."""
    from pipelines.warehouse import insert_frame

    con.execute("delete from alerts.churn_risk_alerts")
    insert_frame(con, "alerts.churn_risk_alerts", pd.DataFrame(list(rows)))


def deliver_as_of(con, as_of: dt.date, senders, now, **kwargs):
    from pipelines.alerts.deliver import alerts_to_deliver

    run_id = f"seg-{as_of}"
    return deliver_run(con, alerts_to_deliver(con, run_id, as_of), run_id, now=now, senders=senders, **kwargs)


SEP, OCT = dt.date(2026, 9, 30), dt.date(2026, 10, 31)


def test_a_rerun_that_adds_an_alert_sends_one_addendum_with_only_that_alert(con, smtp, webhook, senders):
    drift_wrote(con, episode("X", ANNA, SEP, SEP), episode("Z", BO, SEP, SEP))
    deliver_as_of(con, SEP, senders, T0)
    assert len(smtp.to(ANNA)) == 1 and len(webhook.for_recipient(ANNA)) == 1

    # Upstream data changed; the drift step re-ran the same interval and Anna has a new alert.
    drift_wrote(con, episode("X", ANNA, SEP, SEP), episode("Z", BO, SEP, SEP), episode("W", ANNA, SEP, SEP))
    webhook.fail_next(1)  # the addendum's first post meets an outage
    report = deliver_as_of(con, SEP, senders, T0 + dt.timedelta(minutes=10))
    assert len(report.created) == 3  # Anna's addendum on table, e-mail and webhook; nothing for Bo
    assert report.alerts_delivered == {"email": 1, "table": 1}

    (_, addendum) = smtp.to(ANNA)
    assert addendum["Subject"] == "needseg: 1 more account at churn risk (as of 2026-09-30, addendum 1)"
    body = text_part(addendum)
    assert "Account W AB" in body and "Call about W" in body and "Account X AB" not in body
    assert "Addendum 1 to your needseg digest as of 2026-09-30" in body
    assert addendum["Message-ID"] == message_id_header(message_id_for(f"seg-{SEP}", "email", ANNA, part=2))
    assert smtp.to(BO) and len(smtp.to(BO)) == 1

    # The webhook's retry of the addendum carries the addendum's own id.
    retried = deliver_pending(con, senders, now=T0 + dt.timedelta(minutes=12))
    assert retried.alerts_delivered == {"webhook": 1}
    (_, posted) = webhook.for_recipient(ANNA)
    assert posted["headers"]["Idempotency-Key"] == webhook.refused[0]["headers"]["Idempotency-Key"]
    assert posted["headers"]["Idempotency-Key"] == message_id_for(f"seg-{SEP}", "webhook", ANNA, part=2)
    assert "Account W AB" in posted["json"]["text"] and "Account X AB" not in posted["json"]["text"]

    # Re-run again: nothing new.
    again = deliver_as_of(con, SEP, senders, T0 + dt.timedelta(minutes=20))
    assert not again.created and not again.sent
    assert len(smtp.received) == 3 and len(webhook.posts) == 3
    for channel in ("table", "email", "webhook"):
        assert deliveries(con, channel) == [("W", f"seg-{SEP}"), ("X", f"seg-{SEP}"), ("Z", f"seg-{SEP}")]


def test_an_alert_not_flagged_again_next_run_still_reaches_its_owner_once(con, smtp, webhook, senders):
    drift_wrote(con, episode("X", ANNA, SEP, SEP))
    deliver_as_of(con, SEP, senders, T0)
    # The drift step for September re-ran with new data (Y for Bo), but no alerts pass ran
    # before October, and in October Y is not flagged again (still open: it takes two quiet runs).
    # A resolved alert that never reached anyone is not sent: the account recovered.
    drift_wrote(
        con,
        episode("X", ANNA, SEP, OCT),
        episode("Y", BO, SEP, SEP),
        episode("R", BO, dt.date(2026, 8, 31), dt.date(2026, 8, 31), status="resolved"),
    )
    report = deliver_as_of(con, OCT, senders, T0 + dt.timedelta(days=31))
    assert report.alerts_delivered == {"email": 1, "table": 1, "webhook": 1}
    (mail,) = smtp.to(BO)
    body = text_part(mail)
    assert "Account Y AB" in body and "open since 2026-09-30, last flagged 2026-09-30" in body and "Account R AB" not in body
    assert len(smtp.to(ANNA)) == 1  # X was told in September; no reminder after one month
    assert not deliver_as_of(con, OCT, senders, T0 + dt.timedelta(days=31, minutes=5)).created


# ----------------------------------------------------------------------------- reminders in business time

MONTH_ENDS = [
    dt.date(2025, 12, 31),
    dt.date(2026, 1, 31),
    dt.date(2026, 2, 28),
    dt.date(2026, 3, 31),
    dt.date(2026, 4, 30),
    dt.date(2026, 5, 31),
]


@pytest.mark.parametrize(
    ("renotify_after_days", "reminded"),
    [
        (30, MONTH_ENDS[1:]),  # every monthly run, February (28 days) and March (31) alike
        (60, [dt.date(2026, 2, 28), dt.date(2026, 4, 30)]),  # every second run
        (None, []),
    ],
)
def test_reminders_count_the_runs_as_of_dates_not_the_wall_clock(con, smtp, renotify_after_days, reminded):
    """Monthly runs replayed minutes apart (as the demo does): reminders depend only on the
    runs' dates, so they come at the same runs whatever the month lengths or the clock."""
    email_only = {"email": smtp.sender()}
    config = {"alerts": {"renotify_after_days": renotify_after_days}}
    mailed_at = []
    for minute, as_of in enumerate(MONTH_ENDS):
        drift_wrote(con, episode("X", ANNA, MONTH_ENDS[0], as_of))
        before = len(smtp.received)
        deliver_as_of(con, as_of, email_only, T0 + dt.timedelta(minutes=minute), config=config)
        # A re-run of the same month minutes later never repeats anything.
        deliver_as_of(con, as_of, email_only, T0 + dt.timedelta(minutes=minute, seconds=30), config=config)
        if len(smtp.received) > before:
            assert len(smtp.received) == before + 1
            mailed_at.append(as_of)
    assert mailed_at == [MONTH_ENDS[0], *reminded]
    if reminded:
        assert "open since 2025-12-31" in text_part(smtp.to(ANNA)[1])


def test_the_reminder_rule_on_month_ends():
    options = AlertOptions(renotify_after_days=60, renotify_tolerance_days=3)
    assert not options.reminder_due(dt.date(2026, 1, 31), dt.date(2026, 2, 28))
    assert options.reminder_due(dt.date(2026, 1, 31), dt.date(2026, 3, 31))  # 59 days
    assert options.reminder_due(dt.date(2025, 12, 31), dt.date(2026, 2, 28))  # 59 days, across February
    assert not options.reminder_due(dt.date(2026, 3, 31), dt.date(2026, 3, 31))  # same run, minutes apart
    monthly = AlertOptions(renotify_after_days=30)
    assert monthly.reminder_due(dt.date(2026, 1, 31), dt.date(2026, 2, 28))  # 28 days
    assert not monthly.reminder_due(dt.date(2026, 1, 31), dt.date(2026, 2, 7))  # a weekly run
    with pytest.raises(ConfigError, match="renotify_tolerance_days"):
        AlertOptions.from_config({"alerts": {"renotify_tolerance_days": -1}})


# ----------------------------------------------------------------------------- failed for good: the data team hears


def test_a_digest_that_used_all_attempts_is_reported_to_the_data_team_once(con, smtp, webhook):
    environ = {"NEEDSEG_DATA_TEAM_EMAIL": "data-team@example.com"}
    senders = {"email": smtp.sender(), "webhook": webhook.sender()}
    config = {"alerts": {"max_attempts": 2, "retry_base_seconds": 10}}
    webhook.fail_next(100, status=404)
    first = deliver_run(con, frame(alert("A-1", ANNA, 0.8)), RUN, now=T0, senders=senders, config=config, environ=environ)
    assert not first.failures_reported and not smtp.to("data-team@example.com")
    second = deliver_pending(con, senders, now=T0 + dt.timedelta(seconds=10), options=config)
    assert len(second.failed) == 1
    from pipelines.alerts.deliver import report_failures

    reported = report_failures(con, senders, T0 + dt.timedelta(seconds=10), environ=environ)
    assert reported == [message_id_for(RUN, "webhook", ANNA)]
    (notice,) = smtp.to("data-team@example.com")
    assert notice["Subject"] == "needseg: 1 alert digest could not be delivered"
    body = notice.get_content()
    assert f"webhook to {ANNA} (1 alert, run {RUN}), 2 attempts" in body and "HTTP 404" in body
    assert "needseg alerts --retry-failed --pending-only" in body and "alerts.outbox" in body
    assert "s3cr3t" not in body  # the webhook path is its secret

    # Later passes do not repeat the notice.
    deliver_due(con, T0 + dt.timedelta(hours=1), senders, config, environ=environ)
    assert len(smtp.to("data-team@example.com")) == 1
    assert con.execute("select status, failure_notified_at is not null from alerts.outbox where channel = 'webhook'").fetchall() == [
        ("failed", True)
    ]

    # Fixed and requeued: delivered once; the outbox no longer lists it as failed.
    webhook.fail_next(0)
    fixed = deliver_due(con, T0 + dt.timedelta(hours=2), senders, config, retry_failed=True, environ=environ)
    assert fixed.requeued and fixed.alerts_delivered == {"webhook": 1} and len(webhook.posts) == 1


# ----------------------------------------------------------------------------- a crash between accept and record


CRASHING_PASS = """
import sys
from pipelines.alerts.channels import SmtpSender
from pipelines.alerts.outbox import deliver_pending
from pipelines.warehouse import open_warehouse
with open_warehouse(sys.argv[1]) as con:
    deliver_pending(con, {"email": SmtpSender(host="127.0.0.1", port=int(sys.argv[2]), timeout=30)})
"""


def test_a_process_killed_while_sending_resends_with_the_same_id_and_records_one_delivery(tmp_path, smtp):
    """The documented window: the server has the digest, the outbox could not record it. The
    next pass sends it again with the same Message-ID; the tables record it once."""
    import signal
    import subprocess
    import sys

    warehouse = tmp_path / "crash.duckdb"
    with open_warehouse(warehouse) as con:
        smtp.stop()
        deliver_run(con, frame(alert("A-1", ANNA, 0.8)), RUN, now=T0, senders={"email": smtp.sender()})
        con.execute("update alerts.outbox set next_attempt_at = null")  # due now
    smtp.start()
    child = subprocess.Popen([sys.executable, "-c", CRASHING_PASS, str(warehouse), str(smtp.port)])
    smtp.on_data = lambda: (child.send_signal(signal.SIGKILL), child.wait())  # dies before it hears "250"
    try:
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        smtp.on_data = None
        if child.poll() is None:
            child.kill()
    assert len(smtp.received) == 1

    with open_warehouse(warehouse) as con:
        ((status, attempts, last_error),) = con.execute("select status, attempts, last_error from alerts.outbox").fetchall()
        assert status == "pending" and attempts == 2 and "attempt 2 started" in last_error and "did not finish" in last_error
        report = deliver_pending(con, {"email": smtp.sender()})
        assert report.alerts_delivered == {"email": 1}
        assert deliveries(con, "email") == [("A-1:drift_to_price_sensitive", RUN)]
        assert con.execute("select status, attempts, last_error from alerts.outbox").fetchall() == [("sent", 3, None)]
    first, second = (message for _, message in smtp.received)
    assert first["Message-ID"] == second["Message-ID"]
