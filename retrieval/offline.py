"""Nothing leaves the machine unless configured: no model-hub calls, no telemetry from the libraries ragops loads.

The embedder (the first thing that loads a model) and the eval metrics (ragas, litellm, langsmith) both need this
environment; it lives at the bottom layer so that both can apply it without importing each other."""

from __future__ import annotations

import os

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAGAS_DO_NOT_TRACK": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm (under ragas) would fetch its price list
    "LANGSMITH_TEST_TRACKING": "false",
}


def apply_offline_environment() -> None:
    """Set each switch unless the operator set it (an explicit opt-in wins)."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
