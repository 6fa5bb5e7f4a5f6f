"""The channels a digest travels through: e-mail over SMTP, a Slack-compatible webhook, and
the warehouse table that always records it.

Configuration, per channel, first match wins (nothing is on by default, so a local run
sends nothing):

    e-mail   NEEDSEG_SMTP_HOST set -> NEEDSEG_SMTP_PORT (25), NEEDSEG_SMTP_USER,
             NEEDSEG_SMTP_PASSWORD, NEEDSEG_SMTP_FROM (needseg@localhost),
             NEEDSEG_SMTP_STARTTLS (false), NEEDSEG_SMTP_TIMEOUT (30 s);
             else, inside Airflow, the connection `needseg_smtp` (host, port, login,
             password; extra: from_email, starttls or disable_tls, timeout).
    webhook  NEEDSEG_ALERT_WEBHOOK_URL set -> NEEDSEG_ALERT_WEBHOOK_TIMEOUT (10 s);
             else, inside Airflow, the connection `needseg_alert_webhook` (extra `url`
             with the full URL, or host [+ schema as scheme, port] + extra `endpoint`
             or the password as the path, like Slack's webhook connection stores its token).

A missing Airflow connection means "channel off". Every send carries the message's
deterministic id (e-mail `Message-ID`, HTTP `Idempotency-Key`) so a receiver that
deduplicates can drop a repeat after a crash between sending and recording, or after the
server's answer was lost (pipelines/alerts/outbox.py: at least once on the wire).

Errors name the server and the recipient but never a password or the secret path of a
webhook URL, because they are stored in `alerts.outbox.last_error` and logged.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from pipelines import clock
from pipelines.errors import ConfigError, NeedsegError

SMTP_CONNECTION_ID = "needseg_smtp"
WEBHOOK_CONNECTION_ID = "needseg_alert_webhook"
DEFAULT_SMTP_FROM = "needseg@localhost"
MESSAGE_ID_DOMAIN = "needseg"


class DeliveryError(NeedsegError):
    """A channel did not accept a message.

    `channel_unavailable` says the channel as a whole is down (cannot connect, timeout,
    login refused, HTTP 429/5xx): the other messages of this pass are not tried against it.
    `retry_after_seconds` is the server's own hint (HTTP Retry-After), if it gave one.
    """

    def __init__(self, message: str, *, channel_unavailable: bool = False, retry_after_seconds: float | None = None):
        super().__init__(message)
        self.channel_unavailable = channel_unavailable
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class OutgoingMessage:
    """One message of the outbox, as a sender needs it."""

    message_id: str
    run_id: str
    channel: str
    recipient: str
    subject: str
    body_text: str
    body_html: str
    payload: dict[str, Any] = field(default_factory=dict)
    alert_ids: tuple[str, ...] = ()


class Sender(Protocol):
    channel: str

    def send(self, message: OutgoingMessage) -> None:
        """Hand the message to the channel; return once it is accepted, raise DeliveryError if not."""

    def describe(self) -> str:
        """Where messages go, without secrets (for logs and reports)."""


class TableSender:
    """The warehouse table as a channel: the outbox row is the delivery, nothing travels."""

    channel = "table"

    def send(self, message: OutgoingMessage) -> None:
        return None

    def describe(self) -> str:
        return "warehouse tables alerts.outbox / alerts.deliveries"


def message_id_header(message_id: str) -> str:
    return f"<{message_id}@{MESSAGE_ID_DOMAIN}>"


@dataclass(frozen=True)
class SmtpSender:
    host: str
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = DEFAULT_SMTP_FROM
    starttls: bool = False
    timeout: float = 30.0
    channel: str = field(default="email", init=False)

    def describe(self) -> str:
        return f"SMTP {self.host}:{self.port}" + (" (STARTTLS)" if self.starttls else "")

    def build(self, message: OutgoingMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = message.recipient
        email["Subject"] = message.subject
        email["Date"] = format_datetime(clock.utc_now())
        # The same id on every attempt: a repeat after a crash is recognisable as the same mail.
        email["Message-ID"] = message_id_header(message.message_id)
        email["Auto-Submitted"] = "auto-generated"
        email["X-Needseg-Run"] = message.run_id
        email.set_content(message.body_text)
        if message.body_html:
            email.add_alternative(message.body_html, subtype="html")
        return email

    def send(self, message: OutgoingMessage) -> None:
        where = f"SMTP server {self.host}:{self.port}"
        email = self.build(message)
        envelope_from = parseaddr(self.sender)[1] or self.sender
        smtp = smtplib.SMTP(timeout=self.timeout)
        try:
            smtp.connect(self.host, self.port)
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(email, from_addr=envelope_from, to_addrs=[message.recipient])
        except smtplib.SMTPRecipientsRefused as exc:
            refusals = "; ".join(f"{rcpt}: {code} {_decode(text)}" for rcpt, (code, text) in exc.recipients.items())
            raise DeliveryError(f"{where} refused recipient {refusals}") from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{where} refused the login of user {self.username!r}: {exc.smtp_code} {_decode(exc.smtp_error)} "
                f"(check NEEDSEG_SMTP_USER / NEEDSEG_SMTP_PASSWORD or the Airflow connection {SMTP_CONNECTION_ID})",
                channel_unavailable=True,
            ) from None
        except smtplib.SMTPSenderRefused as exc:
            raise DeliveryError(
                f"{where} refused sender {envelope_from}: {exc.smtp_code} {_decode(exc.smtp_error)} (check NEEDSEG_SMTP_FROM)",
                channel_unavailable=True,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where} cannot take the e-mail to {message.recipient}: {exc}") from None
        except (smtplib.SMTPConnectError, smtplib.SMTPHeloError) as exc:
            raise DeliveryError(
                f"{where} refused the connection: {exc.smtp_code} {_decode(exc.smtp_error)}", channel_unavailable=True
            ) from None
        except smtplib.SMTPResponseException as exc:
            # A refusal of this one message (size, content, mailbox): the next one may pass.
            raise DeliveryError(
                f"{where} did not accept the e-mail to {message.recipient}: {exc.smtp_code} {_decode(exc.smtp_error)}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Connection refused, DNS, timeout, TLS, disconnect: the server is unreachable.
            raise DeliveryError(
                f"could not send the e-mail to {message.recipient}: {where} unreachable: {type(exc).__name__}: {exc}",
                channel_unavailable=True,
            ) from None
        finally:
            _close_quietly(smtp)


def _close_quietly(smtp: smtplib.SMTP) -> None:
    """End the session; once the server accepted the message it is delivered, whatever QUIT says."""
    try:
        if smtp.sock is not None:
            smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def redacted_url(url: str) -> str:
    """scheme://host[:port]/… : webhook paths and queries often are the secret."""
    parts = urlsplit(url)
    hidden = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{hidden}"


@dataclass(frozen=True)
class WebhookSender:
    url: str = field(repr=False)
    timeout: float = 10.0
    channel: str = field(default="webhook", init=False)
    _client: httpx.Client | None = field(default=None, init=False, repr=False, compare=False)

    def describe(self) -> str:
        return f"webhook {redacted_url(self.url)}"

    def client(self) -> httpx.Client:
        """One HTTP client per sender: a new one per post loads the CA bundle again (~50 ms)."""
        if self._client is None:
            object.__setattr__(self, "_client", httpx.Client(timeout=self.timeout))
        return self._client

    def send(self, message: OutgoingMessage) -> None:
        where = f"webhook {redacted_url(self.url)}"
        headers = {"Idempotency-Key": message.message_id, "User-Agent": "needseg-alerts", "X-Needseg-Run": message.run_id}
        try:
            response = self.client().post(self.url, json=message.payload, headers=headers)
        except httpx.TimeoutException:
            raise DeliveryError(
                f"{where} did not answer within {self.timeout:g} s (digest for {message.recipient})", channel_unavailable=True
            ) from None
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"could not post the digest for {message.recipient}: {where} unreachable: {type(exc).__name__}: {exc}",
                channel_unavailable=True,
            ) from None
        if 200 <= response.status_code < 300:
            return
        body = response.text.strip().replace("\n", " ")[:200]
        status = response.status_code
        raise DeliveryError(
            f"{where} answered HTTP {status} {response.reason_phrase} to the digest for {message.recipient}"
            + (f": {body}" if body else ""),
            channel_unavailable=status == 429 or status >= 500,
            retry_after_seconds=_retry_after(response.headers.get("Retry-After")),
        )


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: our own backoff is good enough


# ----------------------------------------------------------------------------- configuration

_YES = {"1", "true", "yes", "on"}
_NO = {"0", "false", "no", "off", ""}


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise ConfigError(f"{name}={value!r} is not a yes/no value (use true or false)")


def _env_number(environ: Mapping[str, str], name: str, default: float, kind: type = float) -> Any:
    value = environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = kind(value.strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a {'whole ' if kind is int else ''}number") from None
    if number <= 0:
        raise ConfigError(f"{name}={value!r} must be positive")
    return number


def smtp_from_env(environ: Mapping[str, str]) -> SmtpSender | None:
    host = environ.get("NEEDSEG_SMTP_HOST", "").strip()
    if not host:
        return None
    return SmtpSender(
        host=host,
        port=_env_number(environ, "NEEDSEG_SMTP_PORT", 25, int),
        username=environ.get("NEEDSEG_SMTP_USER") or None,
        password=environ.get("NEEDSEG_SMTP_PASSWORD") or None,
        sender=environ.get("NEEDSEG_SMTP_FROM") or DEFAULT_SMTP_FROM,
        starttls=_env_bool(environ, "NEEDSEG_SMTP_STARTTLS", False),
        timeout=_env_number(environ, "NEEDSEG_SMTP_TIMEOUT", 30.0),
    )


def webhook_from_env(environ: Mapping[str, str]) -> WebhookSender | None:
    url = environ.get("NEEDSEG_ALERT_WEBHOOK_URL", "").strip()
    if not url:
        return None
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"NEEDSEG_ALERT_WEBHOOK_URL must be an http(s) URL, not {redacted_url(url)!r}")
    return WebhookSender(url=url, timeout=_env_number(environ, "NEEDSEG_ALERT_WEBHOOK_TIMEOUT", 10.0))


def running_inside_airflow() -> bool:
    """True in an Airflow task or callback process: the task SDK's runner has its channel to
    the supervisor. Importing Airflow merely to find out would cost seconds, so we don't."""
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def airflow_connection(conn_id: str) -> Any | None:
    """The Airflow connection `conn_id`, or None if Airflow is absent or has no such connection."""
    try:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:
        return None
    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    except Exception as exc:
        # Secrets backends raise their own types; any of them becomes one actionable message.
        raise ConfigError(f"could not read the Airflow connection {conn_id!r}: {type(exc).__name__}: {exc}") from exc


def _extra(conn: Any) -> dict[str, Any]:
    try:
        extra = conn.extra_dejson
    except (AttributeError, ValueError):
        return {}
    return extra if isinstance(extra, dict) else {}


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in _YES


def smtp_from_connection(conn: Any) -> SmtpSender | None:
    if conn is None or not conn.host:
        return None
    extra = _extra(conn)
    if "starttls" in extra:
        starttls = _truthy(extra["starttls"])
    elif "disable_tls" in extra:  # the SMTP provider's own key
        starttls = not _truthy(extra["disable_tls"])
    else:
        starttls = False
    return SmtpSender(
        host=conn.host,
        port=int(conn.port or 25),
        username=conn.login or None,
        password=conn.password or None,
        sender=extra.get("from_email") or extra.get("from") or DEFAULT_SMTP_FROM,
        starttls=starttls,
        timeout=float(extra.get("timeout") or 30.0),
    )


def webhook_from_connection(conn: Any) -> WebhookSender | None:
    if conn is None:
        return None
    extra = _extra(conn)
    url = str(extra.get("url") or "").strip()
    if not url and conn.host:
        host = conn.host if "://" in conn.host else f"{conn.schema or 'https'}://{conn.host}"
        if conn.port:
            host = f"{host.rstrip('/')}:{conn.port}"
        path = str(extra.get("endpoint") or conn.password or "").strip()
        url = f"{host.rstrip('/')}/{path.lstrip('/')}" if path else host
    if not url:
        return None
    return WebhookSender(url=url, timeout=float(extra.get("timeout") or 10.0))


def configured_senders(environ: Mapping[str, str] | None = None, use_airflow_connections: bool | None = None) -> dict[str, Sender]:
    """The channels that are on: always "table"; "email" and "webhook" when configured.

    `use_airflow_connections` None means: only when running inside Airflow.
    """
    environ = os.environ if environ is None else environ
    if use_airflow_connections is None:
        use_airflow_connections = running_inside_airflow()
    senders: dict[str, Sender] = {"table": TableSender()}
    email = smtp_from_env(environ)
    if email is None and use_airflow_connections:
        email = smtp_from_connection(airflow_connection(SMTP_CONNECTION_ID))
    if email is not None:
        senders["email"] = email
    webhook = webhook_from_env(environ)
    if webhook is None and use_airflow_connections:
        webhook = webhook_from_connection(airflow_connection(WEBHOOK_CONNECTION_ID))
    if webhook is not None:
        senders["webhook"] = webhook
    return senders
