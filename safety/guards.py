"""Guards: an ordered list of guardrails-ai validators, each with an on-fail action, loaded from a policy file
(``guardrails/input.yaml``, ``guardrails/output.yaml``).

Actions: ``block`` (refuse with a clear message), ``redact`` (continue with the validator's fix, e.g. PII
replaced by placeholders), ``fallback`` (replace the answer by the extractive fallback), ``flag`` (report only).
The input guard checks the question and every turn of the conversation history (a step's ``applies_to`` can
leave one of them out: the 2,000-character length limit is the question's; a history turn's is the request's).
A validator that raises counts as fired with its action (``redact``, having no fix, becomes ``block``): a guard
never fails open and never turns into a 500.

The validators run directly rather than through ``guardrails.Guard``: on this machine ``Guard.validate`` with
four Hub validators took 14.6 ms a call against 8 ms for the validators alone (its history and tracing).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_serializer

from prompts.messages import ChatMessage
from retrieval.lru import Lru
from safety.groundedness import Groundedness, GroundednessBackend
from safety.injection import (
    InjectionDetector,
    InjectionSettings,
    PatternDetector,
    expand_terms,
    without_sentences,
)

log = logging.getLogger("ragops.guards")

GuardAction = Literal["pass", "flag", "redact", "fallback", "block"]
ACTIONS: tuple[GuardAction, ...] = ("flag", "redact", "fallback", "block")  # in increasing severity
TextPart = Literal["question", "history"]
TEXT_PARTS: tuple[TextPart, ...] = ("question", "history")


def _policies_dir() -> Path:
    """The guard policies: ``safety/policies`` once installed (pyproject maps the repository's ``guardrails/``
    there as package data: never a package named ``guardrails``, guardrails-ai's import name), or
    ``guardrails/`` beside the package in a checkout, since an editable install cannot map a data-only
    directory into a regular package."""
    installed = resources.files("safety").joinpath("policies")
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[1] / "guardrails"


POLICIES_DIR = _policies_dir()
GUARDRAILS_RC = Path("~/.guardrailsrc")


class PolicyError(Exception):
    """A policy file that cannot be loaded."""


def is_none(value: object) -> bool:
    """For ``Field(exclude_if=...)``: an optional field left out of the JSON when it has no value."""
    return value is None


GROUNDEDNESS_CHECK = "groundedness"  # the policy type of the output guard's groundedness step


class Fired(BaseModel):
    """One validator that fired, the action it asks for, and why: a category and its measure ("profanity",
    "groundedness 0.31 below 0.55", "personal data or secrets: email"), never the text it found. Verdicts are
    shown to clients and kept, and the output guard's name what it withdrew: quoting would send that back."""

    model_config = ConfigDict(frozen=True)

    validator: str
    action: str
    reason: str
    turn: int | None = Field(
        None, exclude_if=is_none, description="The history turn it fired on (0 is the first); absent for the question."
    )
    # The policy's validator type ("groundedness", "pii", ...) behind ``validator``, the step's own name: what a
    # finding is, for code that must not parse names or reasons. Not shown: clients have the name and the reason.
    kind: str = Field("", exclude=True)

    @property
    def named(self) -> str:
        """The finding as "validator: reason", or the reason alone where it starts with the validator's name."""
        return self.reason if self.reason.startswith(self.validator) else f"{self.validator}: {self.reason}"


class GuardVerdict(BaseModel):
    """What a guard decided about one text. ``similarity`` (the injection detector's closest known attack) and
    ``groundedness`` are filled in by the validators that measure them; ``enforced`` says, for the output guard,
    whether its block and fallback actions applied."""

    action: GuardAction = Field(description='"pass" or the most severe action of the validators that fired.')
    # The text after redactions: the caller takes it from the verdict at once; it is not part of the verdict's
    # JSON (a stored answer's verdicts come back without it).
    text: str = Field("", exclude=True)
    fired: list[Fired] = Field(default_factory=list)
    # Measurements a guard did not take are left out of its JSON, not shown as null.
    similarity: float | None = Field(None, exclude_if=is_none)
    groundedness: Groundedness | None = Field(None, exclude_if=is_none)
    enforced: bool | None = Field(None, exclude_if=is_none)
    latency_ms: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return self.action in ("pass", "flag", "redact")

    def reasons(self, action: str) -> str:
        """What made the guard take ``action``: each finding ``named``, joined by "; "."""
        return "; ".join(f.named for f in self.fired if f.action == action)

    def fire(self, validator: str, action: GuardAction, reason: str, turn: int | None = None, kind: str = "") -> None:
        self.fired.append(Fired(validator=validator, action=action, reason=reason, turn=turn, kind=kind))
        self.action = _severest(self.action, action)

    def include(self, other: GuardVerdict, turn: int, role: str) -> None:
        """A history turn's verdict, merged into the request's: each finding names its turn."""
        for fired in other.fired:
            reason = f"history turn {turn + 1} ({role}): {fired.reason}"
            self.fire(fired.validator, fired.action, reason, turn, fired.kind)  # type: ignore[arg-type]
        if other.similarity is not None:
            self.similarity = max(self.similarity or 0.0, other.similarity)
        self.latency_ms += other.latency_ms

    def absorb(self, measured: dict[str, Any]) -> None:
        """What a validator measured (its result's metadata) on the verdict's typed fields."""
        if "similarity" in measured:
            self.similarity = float(measured["similarity"])
        if isinstance(measured.get("groundedness"), Groundedness):
            self.groundedness = measured["groundedness"]

    @field_serializer("latency_ms")
    def _rounded(self, latency_ms: float) -> float:
        return round(latency_ms, 3)


class ContextVerdict(BaseModel):
    """The retrieved passages screened for instructions: what fired and how many passages were kept."""

    fired: list[Fired]
    kept: int
    of: int


def answer_evidence(contexts: list[str], question: str) -> dict[str, Any]:
    """What the output guard's validators read about an answer (guardrails-ai passes validators a metadata dict):
    the passages shown, how many, and the question, which groundedness judges the answer against."""
    return {"contexts": contexts, "passages": len(contexts), "question": question}


@dataclass(frozen=True)
class GuardStep:
    name: str
    validator: Any  # a guardrails Validator
    action: GuardAction
    applies_to: tuple[TextPart, ...] = TEXT_PARTS  # the input guard's: the question, history turns, or both
    reason: str | None = None  # said when it fires, instead of a validator's own message (that quotes the text)
    kind: str = ""  # the policy's validator type, which its findings carry (``Fired.kind``)


VALIDATOR_ERROR = "validator error"


class Guard:
    """A policy's validators in order. ``remember``: how many verdicts on texts checked without metadata (the
    input guard's) are kept, keyed by a hash of the text and its part: the same question asked again (a cached
    answer's usual way in) gets the same verdict without running the validators again. A verdict depends only on
    the text and the policy, which is fixed for the guard's life."""

    def __init__(self, name: str, steps: list[GuardStep], remember: int = 0) -> None:
        self.name = name
        self.steps = steps
        self._verdicts: Lru[bytes, GuardVerdict] | None = Lru(remember) if remember else None

    def check(self, text: str, metadata: dict[str, Any] | None = None, part: TextPart = "question") -> GuardVerdict:
        if self._verdicts is None or metadata:
            return self._check(text, metadata, part)
        started = time.perf_counter()
        key = hashlib.sha256(f"{part}\0{text}".encode()).digest()
        known = self._verdicts.get(key)
        if known is None:
            verdict = self._check(text, metadata, part)
            if any(f.reason.startswith(VALIDATOR_ERROR) for f in verdict.fired):
                return verdict  # a validator that failed may not fail next time: not remembered
            self._verdicts.put(key, verdict.model_copy(deep=True))
            return verdict
        # A copy: the caller merges history turns into its verdict.
        return known.model_copy(deep=True, update={"latency_ms": (time.perf_counter() - started) * 1000})

    def _check(self, text: str, metadata: dict[str, Any] | None, part: TextPart) -> GuardVerdict:
        started = time.perf_counter()
        verdict = GuardVerdict(action="pass", text=text)
        for step in self.steps:
            if part not in step.applies_to:
                continue
            try:
                result = step.validator.validate(verdict.text, metadata or {})
            except Exception as exc:  # a broken validator fires; it does not let the text through unchecked
                failed: GuardAction = "block" if step.action == "redact" else step.action
                # The exception's message may hold the text: the operator's log gets it, the verdict its type.
                log.warning("guard %s: validator %s failed", self.name, step.name, exc_info=True)
                verdict.fire(step.name, failed, f"{VALIDATOR_ERROR}: {type(exc).__name__}", kind=step.kind)
                continue
            if result.metadata:
                verdict.absorb(result.metadata)
            if str(getattr(result.outcome, "value", result.outcome)) != "fail":
                continue  # (Hub validators return their own FailResult class: compare outcomes, not types)
            action = step.action
            if action == "redact":
                if result.fix_value is None:
                    action = "block"
                else:
                    verdict.text = result.fix_value
            verdict.fire(step.name, action, step.reason or result.error_message or step.name, kind=step.kind)
        verdict.latency_ms = (time.perf_counter() - started) * 1000
        return verdict

    def check_history(self, history: list[ChatMessage], verdict: GuardVerdict) -> list[ChatMessage]:
        """Every turn, user and assistant alike (a client can write either), checked as the question is; the
        findings go into ``verdict`` (the question's), each naming its turn. Returns the history as redacted;
        stops at the first blocked turn (the request is refused)."""
        redacted: list[ChatMessage] = []
        for turn, message in enumerate(history):
            checked = self.check(message.content, part="history")
            verdict.include(checked, turn, message.role)
            if not checked.passed:
                break
            redacted.append(message.model_copy(update={"content": checked.text}))
        return redacted


def _severest(current: GuardAction, action: GuardAction) -> GuardAction:
    rank = {"pass": -1, **{a: i for i, a in enumerate(ACTIONS)}}
    return action if rank[action] > rank[current] else current


def disable_guardrails_metrics(rc_path: Path = GUARDRAILS_RC) -> None:
    """guardrails-ai sends usage metrics unless ``enable_metrics=false`` is in ~/.guardrailsrc (the only switch
    that stops it in 0.11): set it there, keeping the file's other lines, then in the loaded settings."""
    path = rc_path.expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        kept = [line for line in lines if line.split("=", 1)[0].strip() not in ("enable_metrics", "no_metrics")]
        if [*kept, "enable_metrics=false"] != lines:
            path.write_text("\n".join([*kept, "enable_metrics=false"]) + "\n", encoding="utf-8")
    except OSError:
        pass  # a read-only home: the in-process setting below still holds for validators we build
    from guardrails.settings import settings

    settings.rc.enable_metrics = False


@dataclass
class GuardContext:
    """What ragops' own validators need: built by the composition root."""

    injection: InjectionDetector | None = None
    groundedness: GroundednessBackend | None = None


def load_policy(path: Path) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    steps = data.get("validators") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not steps:
        raise PolicyError(f"{path}: expected 'validators', a list")
    for step in steps:
        if not isinstance(step, dict) or not {"name", "type", "on_fail"} <= set(step):
            raise PolicyError(f"{path}: each validator needs name, type and on_fail: {step!r}")
        if step["on_fail"] not in ACTIONS:
            raise PolicyError(f"{path}: {step['name']}: on_fail must be one of {', '.join(ACTIONS)}")
        parts = step.get("applies_to", list(TEXT_PARTS))
        if not isinstance(parts, list) or not parts or not set(parts) <= set(TEXT_PARTS):
            raise PolicyError(f"{path}: {step['name']}: applies_to must list some of {', '.join(TEXT_PARTS)}")
    return steps


# Hub validators whose failure message quotes the text they checked (profanity_free repeats the whole sentence,
# secrets_present the secrets it found): their findings say this category instead (see ``Fired``). The others'
# messages (and ragops' own validators') name what fired without quoting.
QUOTING_VALIDATORS = {"profanity_free": "profanity", "secrets_present": "secrets"}


def build_guard(name: str, path: Path, context: GuardContext, remember: int = 0) -> Guard:
    steps = load_policy(path)
    disable_guardrails_metrics()
    from guardrails_ai.ban_list import BanList
    from guardrails_ai.regex_match import RegexMatch
    from guardrails_ai.valid_length import ValidLength

    from safety import validators
    from safety.secret_scan import SecretsPresent

    factories: dict[str, Callable[..., Any]] = {
        "valid_length": ValidLength,
        "regex_match": RegexMatch,
        "secrets_present": SecretsPresent,
        "ban_list": lambda **p: BanList(**{"max_l_dist": 0, **p}),
        "profanity_free": validators.ProfanityFree,
        "pii": validators.PersonalData,
        "citations_valid": validators.CitationsValid,
    }
    if context.injection is not None:
        factories["prompt_injection"] = partial(validators.PromptInjection, context.injection)
    if context.groundedness is not None:
        factories[GROUNDEDNESS_CHECK] = partial(validators.Grounded, context.groundedness)
    built = []
    for step in steps:
        factory = factories.get(step["type"])
        if factory is None:
            raise PolicyError(f"{path}: {step['name']}: unknown validator type {step['type']!r}")
        try:
            validator = factory(**(step.get("params") or {}), on_fail="noop")
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{path}: {step['name']}: {exc}") from exc
        parts = tuple(step.get("applies_to", TEXT_PARTS))
        reason = QUOTING_VALIDATORS.get(step["type"])
        built.append(GuardStep(step["name"], validator, step["on_fail"], parts, reason, step["type"]))
    return Guard(name, built, remember)


@dataclass
class Guards:
    """The guards of the answering pipeline; any of them may be off (None)."""

    input: Guard | None = None
    output: Guard | None = None
    context: PatternDetector | None = None  # instructions in retrieved passages
    context_action: str = "drop"  # or "neutralise"

    def screen_passages(self, texts: list[str]) -> tuple[list[tuple[int, str]], list[Fired]]:
        """The passages to keep as (index, text), and what fired: one finding per passage that carries
        instructions, naming its flagged sentences by place and hash, never quoting them. Such a passage is
        dropped, or kept with those sentences replaced (``neutralise``)."""
        if self.context is None:
            return list(enumerate(texts)), []
        kept, fired = [], []
        for i, text in enumerate(texts):
            flags = self.context.flag_sentences(text)
            if not flags:
                kept.append((i, text))
                continue
            reason = f"passage {i + 1}: " + "; ".join(flag.describe() for flag in flags)
            fired.append(Fired(validator="context_injection", action=self.context_action, reason=reason))
            if self.context_action == "neutralise":
                kept.append((i, without_sentences(text, {flag.index for flag in flags})))
        return kept, fired


def load_injection_settings(policies_dir: Path) -> InjectionSettings:
    path = policies_dir / "injection.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        ratio = float(data.get("max_length_ratio", InjectionSettings.max_length_ratio))
        ignored = frozenset(str(i) for i in data.get("ignored_attacks") or [])
        terms: dict[str, str] = {}
        for name, fragment in (data.get("terms") or {}).items():
            terms[str(name)] = expand_terms(str(fragment), terms)
        patterns = _rules(data["patterns"], terms)
        cues = _rules(data.get("similarity_cues") or [], terms)
        passages_only = _rules(data.get("document_patterns") or [], terms)
        threshold = float(data["similarity_threshold"])
        settings = InjectionSettings(patterns, threshold, ratio, ignored, cues, passages_only)
        for _, pattern in settings.passage_patterns + cues:  # a pattern that does not compile is the policy's error
            re.compile(pattern)
        return settings
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
        raise PolicyError(f"{path}: {exc}") from exc


def _rules(entries: list[Any], terms: dict[str, str]) -> list[tuple[str, str]]:
    """Each entry a regular expression (named by itself) or ``{name: regular expression}``."""
    rules = []
    for entry in entries:
        if isinstance(entry, dict) and len(entry) == 1:
            ((name, pattern),) = entry.items()
        elif isinstance(entry, str):
            name, pattern = entry, entry
        else:
            raise ValueError(f"a pattern is a string or {{name: pattern}}: {entry!r}")
        rules.append((str(name), expand_terms(str(pattern), terms)))
    return rules


def load_context_action(policies_dir: Path) -> str:
    path = policies_dir / "context.yaml"
    try:
        action = str((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("action", "drop"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    if action not in ("drop", "neutralise"):
        raise PolicyError(f"{path}: action must be drop or neutralise")
    return action
