"""Drift: customers moving between segments, segments changing, churn-risk alerts."""
