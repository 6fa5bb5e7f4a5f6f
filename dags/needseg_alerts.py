"""
### needseg · alerts

Tells account teams which of their accounts are at churn risk: one digest per account
owner per run (e-mail over SMTP and/or a Slack-compatible webhook when configured; the
`alerts.outbox` table always), each item with the account, the move (from → to segment),
the evidence and the playbook action for the segment it is moving to.

Delivery goes through an outbox: a channel outage loses nothing, retries back off, and a
retry or a re-run of the same interval sends nothing twice. Channels: `NEEDSEG_SMTP_*` /
`NEEDSEG_ALERT_WEBHOOK_URL` or the Airflow connections `needseg_smtp` /
`needseg_alert_webhook`.

**Schedule**: after every segmentation run (the `needseg_segments` asset): compose that
run's digests and send them; while a channel is down the task fails and Airflow retries it.
**And** on a timer (`NEEDSEG_ALERTS_RETRY_SCHEDULE`, default every 15 minutes; `none`
turns it off): timed runs and runs triggered without an `as_of` compose nothing and only
send digests that are pending and due, so an outage longer than the task's retries
delivers when the channel is back, not next month. Digests that used all their attempts
are reported to the data team (`needseg alerts --retry-failed` requeues them).
"""

from airflow.sdk import dag

from pipelines.airflow import support as af
from pipelines import cycle

ASSETS = af.assets()


@dag(**af.dag_arguments("needseg_alerts", af.alerts_schedule(ASSETS["segments"]), __doc__, ["alerts"]))
def needseg_alerts():
    @af.step(pool=af.WAREHOUSE_POOL, inlets=[ASSETS["segments"]])
    def deliver_churn_risk_alerts(**context):
        """A segmentation run's digests (asset event or as_of given), else only what is pending and due."""
        as_of = af.given_as_of(context)
        if as_of is None:
            return cycle.alerts_step(None, pending_only=True)
        return cycle.alerts_step(as_of, raise_if_undelivered=True)

    deliver_churn_risk_alerts()


needseg_alerts()
