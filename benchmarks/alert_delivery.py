"""Time alert delivery through the outbox against real servers on loopback (an SMTP server
and a Slack-compatible webhook): compose and send one run's digests, re-run the same run
(nothing new), an outage then recovery (every digest once), and an idle pending-only pass
(what the alerts DAG's timer does every 15 minutes).

    .venv/bin/python benchmarks/alert_delivery.py [--alerts 1000] [--owners 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
from aiosmtpd.controller import Controller

from pipelines.alerts import deliver_pending, deliver_run
from pipelines.alerts.channels import SmtpSender, TableSender, WebhookSender
from pipelines.alerts.deliver import deliver_due
from pipelines.warehouse import open_warehouse

RUN, AS_OF = "seg-2026-10-31", dt.date(2026, 10, 31)
NOW = dt.datetime(2026, 11, 1, 3, 30)


class Inbox:
    """An SMTP server that counts what it accepts; stop() and start() again make an outage."""

    def __init__(self) -> None:
        self.count = 0
        self.port = free_port()
        self.controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def webhook_server() -> tuple[ThreadingHTTPServer, list[int]]:
    posts: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(1)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, posts


def alerts(count: int, owners: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "alert_id": f"alert-{i}",
                "run_id": RUN,
                "as_of": AS_OF,
                "account_id": f"acc-{i}",
                "account_name": f"Account {i} AB",
                "account_owner": f"owner{i % owners}@example.com",
                "reason": "drift_to_price_sensitive",
                "score": (i % 97) / 97,
                "from_segment": "Loyalty & partnership",
                "to_segment": "Price-focused",
                "evidence": ["discount depth 9 % → 17 % over 3 months", "2 of 3 quotes lost on price"],
                "action": "Offer a fixed-price volume agreement",
                "is_new": True,
                "first_flagged_as_of": AS_OF,
            }
            for i in range(count)
        ]
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--owners", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    inbox = Inbox()
    hook, posts = webhook_server()
    senders = {
        "table": TableSender(),
        "email": SmtpSender(host="127.0.0.1", port=inbox.port, timeout=5),
        "webhook": WebhookSender(url=f"http://127.0.0.1:{hook.server_address[1]}/hook", timeout=5),
    }
    frame = alerts(args.alerts, args.owners)
    lines = [f"{args.alerts} alerts for {args.owners} owners, channels table + e-mail + webhook (loopback):"]
    with tempfile.TemporaryDirectory(prefix="needseg-alerts-bench-") as tmp:
        inbox.start()
        try:
            with open_warehouse(Path(tmp) / "up.duckdb") as con:
                started = time.monotonic()
                report = deliver_run(con, frame, RUN, now=NOW, senders=senders)
                lines.append(
                    f"  compose + send: {time.monotonic() - started:.2f} s, {len(report.sent)} messages, "
                    f"{inbox.count} e-mails, {len(posts)} posts"
                )
                started = time.monotonic()
                again = deliver_run(con, frame, RUN, now=NOW + dt.timedelta(minutes=5), senders=senders)
                lines.append(
                    f"  re-run of the same run: {time.monotonic() - started:.2f} s, {len(again.created)} created, {len(again.sent)} sent"
                )
                started = time.monotonic()
                deliver_due(con, NOW + dt.timedelta(minutes=15), senders)
                lines.append(f"  idle pending-only pass: {time.monotonic() - started:.2f} s")
            inbox.stop()
            inbox.count = 0
            with open_warehouse(Path(tmp) / "outage.duckdb") as con:
                started = time.monotonic()
                down = deliver_run(con, frame, RUN, now=NOW, senders=senders)
                lines.append(f"  compose with the mail server down: {time.monotonic() - started:.2f} s, {len(down.pending)} pending")
                inbox.start()
                started = time.monotonic()
                up = deliver_pending(con, senders, now=NOW + dt.timedelta(minutes=2))
                lines.append(
                    f"  recovery pass: {time.monotonic() - started:.2f} s, {len(up.sent)} sent, {inbox.count} e-mails "
                    f"(each owner once: {inbox.count == args.owners})"
                )
        finally:
            inbox.stop()
            hook.shutdown()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
