"""Tabular records: CSV / parquet sources (and NSL-KDD), feature corruption views, SCARF and CLAN estimators, and their command (cli.py)."""
