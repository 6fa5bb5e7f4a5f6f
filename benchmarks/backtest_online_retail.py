"""Backtest needseg's churn probability on the real UCI Online Retail data against recency,
BG/NBD and a plain gradient-boosting peer; prints precision@100 and AUC per monthly cutoff.

    .venv/bin/python benchmarks/backtest_online_retail.py [--data PATH] [--out DIR] [--top N] [--churn-only]

Needs ../shared/data/uci_online_retail/online_retail.parquet (or NEEDSEG_SHARED_DATA, or --data).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pipelines.backtest import backtest, churn_only
from pipelines.progress import Progress
from pipelines.settings import public_data_dir

DEFAULT = public_data_dir() / "uci_online_retail" / "online_retail.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--out", type=Path, help="data dir to keep (default: a temporary one)")
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument(
        "--churn-only",
        action="store_true",
        help="a quick look: the churn step alone at every cutoff on one feature build (no segmentation or drift, so no drift "
        "inputs to the model and no backtest of earlier runs for the alert threshold); the full replay is the measurement",
    )
    args = parser.parse_args()
    if not args.data.exists():
        print(f"{args.data} not found: pass --data PATH to the Online Retail parquet (or set NEEDSEG_SHARED_DATA)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="needseg-backtest-") as tmp:
        out = args.out or Path(tmp)
        with Progress("backtest") as progress:
            progress.stage("scoring the churn step at every cutoff" if args.churn_only else "replaying 2011 month by month")
            result = (churn_only if args.churn_only else backtest)(args.data, out, top_n=args.top, say=progress.log)
        print("\n".join(result.lines(args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
