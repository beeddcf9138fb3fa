"""ragops' own guardrails-ai validators, next to the offline Guardrails Hub ones (valid length, regex match,
secrets present, ban list, profanity free).

Import only through ``safety.guards.build_guard``: guardrails reads its telemetry setting when a validator is
built, and ``build_guard`` turns it off first.
"""

from __future__ import annotations

from typing import Any

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
