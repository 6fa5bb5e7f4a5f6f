"""Backtest needseg's churn-risk alerts on the real UCI Online Retail data against a
recency-only baseline; prints precision among the top 100 per monthly run.

    .venv/bin/python benchmarks/backtest_online_retail.py [--data PATH] [--out DIR] [--top N]

Needs ../shared/data/uci_online_retail/online_retail.parquet (or NEEDSEG_SHARED_DATA, or --data).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pipelines.backtest import backtest
from pipelines.progress import Progress
from pipelines.settings import public_data_dir

DEFAULT = public_data_dir() / "uci_online_retail" / "online_retail.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--out", type=Path, help="data dir to keep (default: a temporary one)")
    parser.add_argument("--top", type=int, default=100)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"{args.data} not found: pass --data PATH to the Online Retail parquet (or set NEEDSEG_SHARED_DATA)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="needseg-backtest-") as tmp:
        out = args.out or Path(tmp)
        with Progress("backtest") as progress:
            progress.stage("replaying 2011 month by month")
            result = backtest(args.data, out, top_n=args.top, say=progress.log)
        print("\n".join(result.lines(args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
