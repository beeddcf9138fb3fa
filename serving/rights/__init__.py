"""Data rights: erasing a document's or a person's data from every store (``erasure``), keeping each store no
longer than its retention period (``retention``). The top wing of ``serving``: it reaches every store below it."""

from serving.governance.audit_chain import ERASURE_ACTION

RETENTION_ACTION = "retention.apply"
"""The audit trail's admin action of a retention run (``ragops retention apply`` or the server's daily run): its
``detail`` holds what each store removed; the compliance report reads when retention last ran from it."""

__all__ = ["ERASURE_ACTION", "RETENTION_ACTION"]
