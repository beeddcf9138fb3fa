"""The service behind the API, in wings that only look down (the import-linter contract in pyproject.toml):

loop          the production loop: kept answers, feedback, drift, canary, labels, lineage, judge sampling
answering     the pipeline, its steps, the answer cache, the generators and their fallback chain
governance    principals, admission, keys, rate limits, usage and budgets, the audit trail
observe       metrics, alerts, traces
contracts     the records the wings speak (answers, requests, generations) | infra: state store, Redis, clock
"""
