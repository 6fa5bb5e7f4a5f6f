"""Real servers on 127.0.0.1 for delivery tests: an aiosmtpd SMTP server and a stdlib HTTP
server standing in for a Slack-compatible webhook. Both can be stopped and started again
(an outage), and keep what they received."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

from pipelines.alerts.channels import SmtpSender, WebhookSender


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LoopbackSmtp:
    """A real SMTP server that keeps what it receives; can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[list[str], email.message.EmailMessage]] = []
        self.controller: Controller | None = None
        self.on_data = None  # called once a message is received, before the server answers

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append((list(envelope.rcpt_tos), message))
        if self.on_data is not None:
            self.on_data()
        return "250 Message accepted for delivery"

    def start(self, **smtp_parameters) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **smtp_parameters)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [message for rcpts, message in self.received if address in rcpts]

    def sender(self, **overrides) -> SmtpSender:
        return SmtpSender(**{"host": "127.0.0.1", "port": self.port, "timeout": 2.0, "sender": "needseg <alerts@example.com>", **overrides})


class LoopbackWebhook:
    """A Slack-compatible webhook: records JSON posts; can fail the next N requests or stop."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.refused: list[dict] = []
        self.fail_remaining = 0
        self.fail_status = 503
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record = {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                with hook._lock:
                    failing = hook.fail_remaining > 0
                    if failing:
                        hook.fail_remaining -= 1
                        hook.refused.append(record)
                    else:
                        hook.posts.append(record)
                status, text = (hook.fail_status, b"service unavailable") if failing else (200, b"ok")
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/services/T0001/B0001/s3cr3t-token"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self.fail_remaining, self.fail_status = count, status

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
            self.server.server_close()

    def for_recipient(self, address: str) -> list[dict]:
        return [p for p in self.posts if f"For {address}" in p["json"]["text"]]

    def sender(self) -> WebhookSender:
        return WebhookSender(url=self.url, timeout=2.0)
