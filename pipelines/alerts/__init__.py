"""Churn-risk alerts to account teams: from a run's open alerts to one digest per account
owner, delivered by e-mail and/or a Slack-compatible webhook, and always recorded in the
warehouse (`alerts.outbox`, `alerts.deliveries`).

    digest.py    compose one owner's digest: subject, plain text, HTML, webhook payload
    outbox.py    the outbox and deliveries tables; enqueue idempotently, deliver with retries
    channels.py  SMTP and webhook senders, configured from the environment or Airflow
    deliver.py   deliver_run: enqueue a run's alerts for every channel, deliver what is due

Producing the alerts (which accounts, which reason, which score) happens upstream; this
package only delivers them, exactly once per alert, channel and run.
"""

from pipelines.alerts.channels import DeliveryError, configured_senders
from pipelines.alerts.deliver import deliver_run
from pipelines.alerts.outbox import AlertOptions, DeliveryReport, deliver_pending, enqueue, requeue_failed

__all__ = [
    "AlertOptions",
    "DeliveryError",
    "DeliveryReport",
    "configured_senders",
    "deliver_pending",
    "deliver_run",
    "enqueue",
    "requeue_failed",
]
