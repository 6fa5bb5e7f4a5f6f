"""What the data team sees and does around alert delivery: the alerts DAG run by Airflow
(dag.test runs the real task and the real failure callback), its failure notice at a real
SMTP server on loopback, and `needseg alerts` / `needseg status` after an outage that
outlasted every retry."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import quote

import pandas as pd
import pytest

from pipelines.alerts import deliver_run
from pipelines.alerts.channels import SmtpSender
from pipelines.cli import main
from pipelines.settings import PROJECT_ROOT, load_settings
from pipelines.warehouse import insert_frame, open_warehouse
from tests.loopback import LoopbackSmtp

AS_OF = dt.date(2026, 10, 31)
RUN = f"seg-{AS_OF}"
ANNA = "anna.berg@example.com"
DATA_TEAM = "data-team@example.com"


@pytest.fixture
def smtp():
    server = LoopbackSmtp()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path, monkeypatch, smtp):
    """A deployment whose channels point at the loopback server; no retries in Airflow."""
    monkeypatch.setenv("NEEDSEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NEEDSEG_TASK_RETRIES", "0")
    monkeypatch.setenv("NEEDSEG_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("NEEDSEG_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("NEEDSEG_SMTP_TIMEOUT", "2")
    monkeypatch.setenv("NEEDSEG_DATA_TEAM_EMAIL", DATA_TEAM)
    monkeypatch.delenv("NEEDSEG_ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("NEEDSEG_ALERTS_RETRY_SCHEDULE", raising=False)
    return load_settings()


@pytest.fixture(scope="module")
def airflow_db():
    from pipelines.airflow import env as airflow_env

    airflow_env.ensure_metadata_db()


@pytest.fixture
def alerts_dag(airflow_db, settings):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "needseg_alerts.py"))
    assert bag.import_errors == {}
    return bag.dags["needseg_alerts"]


def one_alert(alert_id: str = "A-1", owner: str = ANNA) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "alert_id": alert_id,
                "run_id": RUN,
                "as_of": AS_OF,
                "account_id": f"acc-{alert_id}",
                "account_name": f"Account {alert_id} AB",
                "account_owner": owner,
                "reason": "drift_to_price_sensitive",
                "score": 0.8,
                "from_segment": "Loyalty & partnership",
                "to_segment": "Price-focused",
                "evidence": ["discount depth 9 % → 17 %"],
                "action": "Offer a fixed-price volume agreement",
                "is_new": True,
                "first_flagged_as_of": AS_OF,
            }
        ]
    )


def an_outage_left_a_digest_behind(settings, smtp, **config) -> None:
    """The run's delivery met a mail server that was down (and stayed down past every retry)."""
    smtp.stop()
    with open_warehouse(settings.warehouse_path) as con:
        deliver_run(
            con,
            one_alert(),
            RUN,
            now=dt.datetime(2026, 11, 1, 3, 30),
            senders={"email": SmtpSender(host="127.0.0.1", port=smtp.port, timeout=2)},
            config=config or None,
        )
    smtp.start()


@pytest.mark.slow  # Airflow runs the DAG (dag.test)
def test_a_failed_alerts_run_tells_the_data_team_which_dag_task_and_run_and_where_the_log_is(alerts_dag, smtp):
    # Triggered for a month that was never segmented: the task fails, so does the run.
    run = alerts_dag.test(run_conf={"as_of": AS_OF.isoformat()})
    assert str(run.state) == "failed"
    (notice,) = smtp.to(DATA_TEAM)
    assert notice["Subject"] == f"needseg: DAG needseg_alerts failed (run {run.run_id})"
    body = notice.get_content()
    assert "DAG: needseg_alerts" in body and f"Run: {run.run_id}" in body and "Task: deliver_churn_risk_alerts" in body
    assert f"/dags/needseg_alerts/runs/{quote(run.run_id)}/tasks/deliver_churn_risk_alerts" in body
    assert "Log: http" in body


@pytest.mark.slow  # Airflow runs the DAG (dag.test)
def test_a_run_without_a_date_sends_what_is_pending_and_composes_nothing(alerts_dag, settings, smtp):
    """What the retry timer's runs do: the digest left behind by an outage goes out, once."""
    an_outage_left_a_digest_behind(settings, smtp)
    run = alerts_dag.test()
    assert str(run.state) == "success"
    (mail,) = smtp.to(ANNA)
    assert "Account A-1 AB" in mail.get_body(preferencelist=("plain",)).get_content()
    again = alerts_dag.test()
    assert str(again.state) == "success" and len(smtp.received) == 1
    with open_warehouse(settings.warehouse_path) as con:
        assert con.execute("select channel, status from alerts.outbox").fetchall() == [("email", "sent")]


def segmentation_ran(con, as_of: dt.date) -> None:
    con.execute(
        "insert into segments.segment_runs (run_id, as_of, created_at, model_version, taxonomy, taxonomy_digest, basis, k, "
        "k_reason, k_evidence, key_account_mode, customers, surveyed, inferred, prospects, key_accounts) "
        "values (?, ?, now(), 'test', 'default', 'x', 'needs', 4, 'test', '{}', 'pooled', 1, 1, 0, 0, 0)",
        [f"seg-{as_of}", as_of],
    )


def open_episode(alert_id: str, owner: str, as_of: dt.date) -> dict:
    return {
        "alert_id": alert_id,
        "account_id": f"acc-{alert_id}",
        "reason": "drift_to_price_sensitive",
        "status": "open",
        "opened_run_id": f"seg-{as_of}",
        "opened_as_of": as_of,
        "last_seen_run_id": f"seg-{as_of}",
        "last_seen_as_of": as_of,
        "resolved_as_of": None,
        "runs_flagged": 1,
        "score": 0.7,
        "peak_score": 0.7,
        "account_name": f"Account {alert_id} AB",
        "account_owner": owner,
        "from_segment": "Service-focused",
        "to_segment": "Price-focused",
        "evidence": json.dumps(["3 of 4 quotes lost on price"]),
        "action": "Review the price agreement",
    }


def needseg(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_cli_sends_pending_digests_requeues_failed_ones_and_status_shows_them(settings, smtp, capsys, tmp_path):
    an_outage_left_a_digest_behind(settings, smtp, max_attempts=1)
    # The notice could not go out either (the same mail server was down): not marked as told.
    code, out, _ = needseg(capsys, "status")
    assert code == 0
    assert "1 message(s) FAILED for good (needseg alerts --retry-failed" in out
    assert f"email to {ANNA} (1 alert, run {RUN}), 1 attempt" in out and "[data team not told yet]" in out

    # The server is back. A pending-only pass composes nothing, sends no failed digest,
    # but now tells the data team about it, once.
    code, out, _ = needseg(capsys, "alerts", "--pending-only")
    assert code == 0 and "0 messages created; 0 sent" in out and "data team told about 1 failed message" in out
    (notice,) = smtp.to(DATA_TEAM)
    assert notice["Subject"] == "needseg: 1 alert digest could not be delivered"
    assert not smtp.to(ANNA)
    needseg(capsys, "alerts", "--pending-only")
    assert len(smtp.to(DATA_TEAM)) == 1

    # Requeue and send: Anna gets her digest once.
    code, out, _ = needseg(capsys, "alerts", "--retry-failed", "--pending-only")
    assert code == 0 and "1 requeued" in out and "1 sent" in out
    assert len(smtp.to(ANNA)) == 1
    code, out, _ = needseg(capsys, "alerts", "--retry-failed", "--pending-only", "--strict")
    assert code == 0 and "0 sent" in out and len(smtp.received) == 2
    _, out, _ = needseg(capsys, "status")
    assert "FAILED for good" not in out and "email    sent          1 messages       1 alerts" in out

    # Composing needs a segmentation run; without --as-of it takes the latest.
    code, _, err = needseg(capsys, "alerts", "--as-of", "2026-09-30")
    assert code == 1 and "no segmentation run yet" in err and "--pending-only still sends" in err
    with open_warehouse(settings.warehouse_path) as con:
        segmentation_ran(con, AS_OF)
        insert_frame(con, "alerts.churn_risk_alerts", pd.DataFrame([open_episode("B-1", "bo.lind@example.com", AS_OF)]))
    code, _, err = needseg(capsys, "alerts", "--as-of", "2026-09-30")
    assert code == 1 and "no segmentation run as of 2026-09-30" in err and "latest run is as of 2026-10-31" in err
    code, out, _ = needseg(capsys, "alerts")
    assert code == 0 and f"alerts run {RUN}: 1 open alerts" in out
    assert len(smtp.to("bo.lind@example.com")) == 1
    code, out, _ = needseg(capsys, "alerts")
    assert "0 messages created; 0 sent" in out and len(smtp.received) == 3  # notice, Anna, Bo
    code, _, err = needseg(capsys, "alerts", "--pending-only", "--as-of", "2026-10-31")
    assert code == 1 and "--as-of does not apply" in err


def test_alerts_help_names_the_operations(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["alerts", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--pending-only" in text and "only send digests that are pending and due" in text
    assert "--retry-failed" in text and "failed for good" in text
    assert "default: the latest run" in text
