"""
### needseg · alerts

Tells account teams which of their accounts are at churn risk: one digest per account
owner per run (e-mail over SMTP and/or a Slack-compatible webhook when configured; the
`alerts.outbox` table always), each item with the account, the move (from → to segment),
the evidence and the playbook action for the segment it is moving to.

Delivery goes through an outbox: a channel outage loses nothing (the task fails after
recording what was sent, and its retries deliver the rest), and a retry or a re-run of
the same interval sends nothing twice. Channels: `NEEDSEG_SMTP_*` /
`NEEDSEG_ALERT_WEBHOOK_URL` or the Airflow connections `needseg_smtp` /
`needseg_alert_webhook`.

**Schedule**: after every segmentation run (the `needseg_segments` asset).
"""

from airflow.sdk import dag, task

from pipelines import airflow_support as af
from pipelines import cycle

ASSETS = af.assets()


@dag(**af.dag_arguments("needseg_alerts", [ASSETS["segments"]], __doc__, ["alerts"]))
def needseg_alerts():
    @task(pool=af.WAREHOUSE_POOL, inlets=[ASSETS["segments"]])
    def deliver_churn_risk_alerts(**context):
        """Compose each owner's digest and send it; fail (and retry) while a channel is down."""
        as_of = af.resolve_as_of(context)
        return cycle.alerts_step(as_of, raise_if_undelivered=True)

    deliver_churn_risk_alerts()


needseg_alerts()
