"""Churn-risk alerts to account teams: from a run's open alerts to one digest per account
owner, delivered by e-mail and/or a Slack-compatible webhook, and always recorded in the
warehouse (`alerts.outbox`, `alerts.deliveries`).

    digest.py    compose one owner's digest: subject, plain text, HTML, webhook payload
    outbox.py    the outbox and deliveries tables; enqueue idempotently (addenda for alerts
                 that join a run late), reminders by as-of date, deliver with retries
    channels.py  SMTP and webhook senders, configured from the environment or Airflow
    deliver.py   deliver_run: a run's alerts for every channel, then what is due;
                 deliver_due: only what is pending (the DAG's timer); failures to the data team

Producing the alerts (which accounts, which reason, which score) happens upstream; this
package only delivers them: once per alert, channel and run in the warehouse, at least once
on the wire with a stable idempotency key (outbox.py says exactly when a repeat can happen).
"""

from pipelines.alerts.channels import DeliveryError, configured_senders
from pipelines.alerts.deliver import alerts_to_deliver, deliver_due, deliver_run
from pipelines.alerts.outbox import AlertOptions, DeliveryReport, deliver_pending, enqueue, requeue_failed

__all__ = [
    "AlertOptions",
    "DeliveryError",
    "DeliveryReport",
    "alerts_to_deliver",
    "configured_senders",
    "deliver_due",
    "deliver_pending",
    "deliver_run",
    "enqueue",
    "requeue_failed",
]
