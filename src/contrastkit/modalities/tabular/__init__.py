"""Tabular records: CSV / ARFF sources, feature corruption views, SCARF and CLAN estimators."""
