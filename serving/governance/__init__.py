"""Who may ask and what it costs: roles and principals (``access``), the admission of each request
(``admission``), API keys (``keys``), rate limits and quotas (``rate_limits``), usage and budgets (``usage``),
the hash-chained audit trail (``audit``)."""
