"""The trained-detector backend of groundedness: a Hugging Face model in a local directory
(``RAGOPS_GROUNDEDNESS_MODEL``), read once at start, never downloaded.

Two kinds are understood, told apart by the model's architecture:

- a sequence classifier (HHEM-style cross-encoder; one that needs ``trust_remote_code``, as HHEM-2.1-open does,
  is not loaded): input (passages, answer sentence), output whether the
  passages support the sentence; the support is the probability of the label named like "consistent",
  "supported", "entailment" or "grounded" (else label 1);
- a token classifier (LettuceDetect-style): input (question and passages, answer sentence), a label per token
  (one named like the above, else label 0, is supported; LettuceDetect's 1 is hallucinated); the support is
  the supported label's probability at the sentence's least supported token.

The question goes in front of the passages for both (a detector trained without it reads it as context).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safety.groundedness import Groundedness, SentenceSupport, answer_sentences, is_abstention, judged

# Whole label names (normalised) meaning "supported"; matched exactly, so "unsupported" or "inconsistent" never are.
_SUPPORTED_LABELS = frozenset({"consistent", "supported", "entailment", "entailed", "grounded", "faithful"})
MAX_TOKENS = 512  # when the model does not say its own limit


class GroundednessModelError(Exception):
    """The configured detector cannot be used; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class _Detector:
    tokenizer: Any
    model: Any
    token_level: bool
    supported_label: int  # sequence classifiers: the label meaning "supported"
    max_tokens: int


def _supported_label(id2label: dict[int, str], token_level: bool) -> int:
    """The label named like "consistent"; unnamed labels: 1 for a sequence classifier (HHEM: 1 is consistent),
    0 for a token classifier (LettuceDetect: 1 is hallucinated)."""
    for index, label in sorted(id2label.items()):
        if re.sub(r"[^a-z]", "", str(label).lower()) in _SUPPORTED_LABELS:
            return int(index)
    return 0 if token_level or len(id2label) < 2 else 1


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise GroundednessModelError(f"groundedness model {directory}: no such directory")
    try:
        config: dict[str, Any] = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GroundednessModelError(
            f"groundedness model {directory}: no readable config.json (a Hugging Face model directory is needed)"
        ) from exc
    return config


def load_detector(directory: Path) -> _Detector:
    """The tokenizer and model in ``directory``, offline, or a ``GroundednessModelError``."""
    config = _read_config(directory)
    token_level = any("TokenClassification" in a for a in config.get("architectures") or [])
    try:
        from transformers import (
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )
        from transformers.utils import logging as transformers_logging

        # One line per start in the server's log, not a progress bar.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        loader = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
        model = loader.from_pretrained(directory, local_files_only=True).eval()
    except Exception as exc:  # transformers raises many kinds; each means this directory cannot serve
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GroundednessModelError(f"groundedness model {directory}: cannot load it: {first_line}") from exc
    if not tokenizer.is_fast:  # the answer's tokens are found by sequence ids, which only fast tokenizers give
        raise GroundednessModelError(f"groundedness model {directory}: needs a fast (tokenizer.json) tokenizer")
    labels = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", MAX_TOKENS))
    return _Detector(tokenizer, model, token_level, _supported_label(labels, token_level), int(limit))


class ModelGroundedness:
    """``GroundednessBackend`` over a trained detector; the answer's score is its least supported sentence."""

    def __init__(self, directory: Path, threshold: float = 0.5) -> None:
        self._detector = load_detector(directory)
        self.threshold = threshold
        # A fast tokenizer's truncation settings are per call but held on the object: one request at a time.
        self._lock = threading.Lock()

    def score(self, answer: str, contexts: list[str], *, question: str) -> Groundedness:
        if is_abstention(answer):
            return Groundedness(score=None)
        sentences = answer_sentences(answer)
        if not sentences or not contexts:
            return judged(answer, contexts, [], self.threshold)
        premise = "\n\n".join([f"Question: {question}", *contexts]) if question else "\n\n".join(contexts)
        supports = [SentenceSupport(s, self._support(premise, s)) for s in sentences]
        return judged(answer, contexts, supports, self.threshold)

    def _support(self, premise: str, sentence: str) -> float:
        import torch

        d = self._detector
        with self._lock, torch.inference_mode():  # inference mode is per thread: set where the model runs
            encoded = d.tokenizer(
                premise, sentence, truncation="longest_first", max_length=d.max_tokens, return_tensors="pt"
            )
            supported = torch.softmax(d.model(**encoded).logits[0], dim=-1)[..., d.supported_label]
        if not d.token_level:
            return float(supported)
        in_sentence = supported[_second_segment(encoded)]  # its least supported token speaks for the sentence
        return float(in_sentence.min()) if in_sentence.numel() else 1.0


def _second_segment(encoded: Any) -> Any:
    """The answer sentence's tokens: sequence id 1 (token type ids are absent from some tokenizers)."""
    import torch

    ids = encoded.sequence_ids(0)
    return torch.tensor([i == 1 for i in ids], dtype=torch.bool)
