"""The compliance report (``ragops compliance report``): each control with its evidence and PASS, FAIL or NA.

A control (``model.Control``) is an id, a title, what it checks, and a check that reads one ``Deployment`` (the
settings, the bind host, the state store, one ``now``) and returns a ``Verdict``. The controls live by concern:
``access`` (keys beyond loopback, roles, rotation), ``audit_trail`` (the chain, its anchor, retention),
``data_protection`` (erasure, PII redaction, injection detection, backups), ``release`` (telemetry destinations,
production versions and their lineage); ``runner`` runs them in the report's order, ``html`` renders the page.
docs/guides/compliance.md describes each control.
"""
