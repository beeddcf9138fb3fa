"""Eval suites: datasets, metrics, the runner and the regression gate."""
