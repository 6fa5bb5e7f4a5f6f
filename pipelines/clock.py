"""The one clock needseg reads: UTC, always.

Wall-clock time is bookkeeping only (when a batch was loaded, a run made, a message sent);
what a run *describes* is its as-of date, never the clock. Timestamps stored in DuckDB are
naive UTC (`utc_naive_now`); everything else is timezone-aware UTC (`utc_now`).
"""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """Now, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def utc_naive_now() -> dt.datetime:
    """Now in UTC without a timezone, as DuckDB's TIMESTAMP columns hold it."""
    return utc_now().replace(tzinfo=None)


def utc_today() -> dt.date:
    """Today's date in UTC (not the machine's local date)."""
    return utc_now().date()
