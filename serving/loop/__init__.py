"""The production loop: kept answers (``answer_log``), users' feedback, drift checks, the canary and its
automatic rollback, live prompt labels, lineage, and the judge that samples answers for evaluation."""
