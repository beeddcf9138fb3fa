"""ragops' own guardrails-ai validators, next to the offline Guardrails Hub ones (valid length, regex match,
secrets present, ban list; profanity free's model, run here without sklearn's per-call overhead).

Import only through ``safety.guards.build_guard``: guardrails reads its telemetry setting when a validator is
built, and ``build_guard`` turns it off first.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from guardrails.classes.validation.validation_result import ErrorSpan, FailResult, PassResult, ValidationResult
from guardrails.validator_base import Validator, register_validator

from prompts.citations import cited_numbers, says_not_in_documents
from safety.groundedness import GroundednessBackend, is_abstention
from safety.injection import InjectionDetector
from safety.pii import PII_KINDS, find_pii, redact

NOTHING_SUPPORTED = "groundedness: nothing the passages could support"


@register_validator(name="ragops/pii", data_type="string")
class PersonalData(Validator):
    """E-mail, phone, card (Luhn), IBAN (mod 97), national ids, IP addresses, key formats; fix: redacted."""

    def __init__(self, kinds: list[str] | None = None, on_fail: Any = None, **kwargs: Any) -> None:
        super().__init__(on_fail=on_fail, kinds=kinds, **kwargs)
        self._kinds = tuple(kinds or PII_KINDS)

    def validate(self, value: Any, metadata: dict[str, Any]) -> ValidationResult:
        findings = find_pii(value, self._kinds)
        if not findings:
            return PassResult()
        kinds = sorted({f.kind for f in findings})
        return FailResult(
            error_message=f"personal data or secrets: {', '.join(kinds)}",
            fix_value=redact(value, findings),
            error_spans=[ErrorSpan(start=f.start, end=f.end, reason=f.kind) for f in findings],
        )


@register_validator(name="ragops/profanity_free", data_type="string")
class ProfanityFree(Validator):
    """The Hub's ``profanity_free`` decision (alt-profanity-check's model), with sklearn's per-call overhead gone.

    The model is a ``CalibratedClassifierCV`` of five linear SVMs with sigmoid calibration: "profane" is the mean
    of ``expit(-(a_i * (w_i . x + c_i) + b_i))`` over them above 0.5, with ``x`` the sentence's l2-normalised
    tf-idf, and that is computed here over the sentence's own words. ``predict`` reached the same sums through
    input and label checks costing ~7 ms a sentence on a loaded 2-core machine; this costs well under 1 ms, and
    agrees with it on every sentence of 300 NYT passages and on profane ones (tests/test_guards.py)."""

    def __init__(self, on_fail: Any = None, **kwargs: Any) -> None:
        super().__init__(on_fail=on_fail, **kwargs)
        from profanity_check.profanity_check import model, vectorizer  # type: ignore[import-untyped]

        calibrated = model.calibrated_classifiers_
        # The vectorizer's steps (lower case, word tokens, English stop words, tf-idf, l2 norm) with its own
        # analyzer and weights: sklearn's transform adds its input and output checks to every call.
        self._analyze = vectorizer.build_analyzer()
        self._columns: dict[str, int] = vectorizer.vocabulary_
        self._idf = vectorizer.idf_
        self._weights = np.stack([c.estimator.coef_[0] for c in calibrated], axis=1)
        self._intercepts = np.array([c.estimator.intercept_[0] for c in calibrated])
        self._a = np.array([c.calibrators[0].a_ for c in calibrated])
        self._b = np.array([c.calibrators[0].b_ for c in calibrated])

    def profane(self, text: str) -> bool:
        counts = Counter(c for c in map(self._columns.get, self._analyze(text)) if c is not None)
        decisions = self._intercepts
        if counts:
            columns = np.fromiter(counts, dtype=np.int64)
            tfidf = np.fromiter(counts.values(), dtype=np.float64) * self._idf[columns]
            decisions = decisions + (tfidf / np.linalg.norm(tfidf)) @ self._weights[columns]
        return float(np.mean(1 / (1 + np.exp(self._a * decisions + self._b)))) > 0.5

    def validate(self, value: Any, metadata: dict[str, Any]) -> ValidationResult:
        if not self.profane(str(value)):
            return PassResult()
        return FailResult(
            error_message="profanity",
            fix_value="",
            error_spans=[ErrorSpan(start=0, end=len(value), reason="profanity")],
        )


@register_validator(name="ragops/prompt_injection", data_type="string")
class PromptInjection(Validator):
    """Instruction-override patterns and similarity to known attacks. ``metadata["vector"]``: the text's
    embedding when the caller has it (a question's is in the query cache)."""

    def __init__(self, detector: InjectionDetector, on_fail: Any = None, **kwargs: Any) -> None:
        super().__init__(on_fail=on_fail, **kwargs)
        self.detector = detector

    def validate(self, value: Any, metadata: dict[str, Any]) -> ValidationResult:
        verdict = self.detector.check(value, metadata.get("vector"))
        if not verdict.detected:
            return PassResult()
        return FailResult(error_message=verdict.reason, metadata={"similarity": verdict.similarity})


@register_validator(name="ragops/citations_valid", data_type="string")
class CitationsValid(Validator):
    """Every [n] points at one of ``metadata["passages"]`` retrieved passages, and the answer cites one."""

    def validate(self, value: Any, metadata: dict[str, Any]) -> ValidationResult:
        passages = int(metadata.get("passages", 0))
        numbers = cited_numbers(value)
        invalid = sorted({n for n in numbers if not 1 <= n <= passages})
        if invalid:
            return FailResult(error_message=f"cites passages that were not retrieved: {invalid}")
        if passages and not numbers and not says_not_in_documents(value):  # an abstention has nothing to cite
            return FailResult(error_message="cites no passage")
        return PassResult()


@register_validator(name="ragops/groundedness", data_type="string")
class Grounded(Validator):
    """Support of every sentence by ``metadata["contexts"]`` as an answer to ``metadata["question"]``; fails below
    the scorer's threshold. A text with no score passes only when it abstains: a missing score never passes a
    claim (the shipped backends score a degenerate answer 0; a backend of one's own may return None)."""

    def __init__(self, scorer: GroundednessBackend, on_fail: Any = None, **kwargs: Any) -> None:
        super().__init__(on_fail=on_fail, **kwargs)
        self.scorer = scorer

    def validate(self, value: Any, metadata: dict[str, Any]) -> ValidationResult:
        contexts, question = list(metadata.get("contexts", [])), str(metadata.get("question", ""))
        result = self.scorer.score(value, contexts, question=question)
        details = {"groundedness": result}  # typed: the guard's verdict carries it as is
        if result.score is None:
            if is_abstention(value):
                return PassResult(metadata=details)
            return FailResult(error_message=NOTHING_SUPPORTED, metadata=details)
        if result.score >= self.scorer.threshold:
            return PassResult(metadata=details)
        return FailResult(
            error_message=f"groundedness {result.score:.2f} below {self.scorer.threshold}",
            metadata=details,
        )
