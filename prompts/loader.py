"""Prompt files: one YAML file a version, holding the templates, model parameters, description and changelog.

Templates are Jinja2 with ``StrictUndefined``; at load time every variable a template uses must be one the
pipeline provides, and the required ones must be used, so a typo fails when the file is loaded, not as a silent
blank in production. Rendering puts passages between numbered delimiters the answer cites.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.meta
import yaml

from prompts.answer_format import ANSWER_FORMATS, AnswerFormat
from prompts.messages import ChatMessage

PROMPTS_DIR = Path(__file__).resolve().parent
PROVIDED_VARIABLES = frozenset({"question", "passages", "history"})
# What a prompt is for, and the variables its templates must use: an answer prompt shows the passages; a rewrite
# prompt (a follow-up made standalone for retrieval) reads the conversation before any passage is found.
PromptPurpose = Literal["answer", "rewrite"]
REQUIRED_VARIABLES: dict[PromptPurpose, frozenset[str]] = {
    "answer": frozenset({"question", "passages"}),
    "rewrite": frozenset({"question", "history"}),
}
_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
_VERSION = re.compile(r"^v[0-9]+[a-z0-9_.-]*$")


class PromptError(Exception):
    """A prompt file that cannot be used (missing, malformed, or using unknown variables)."""


@dataclass(frozen=True)
class ModelParams:
    temperature: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = 0
    # Decoding constraint on the answer (prompts/answer_format.py): part of the prompt version, so a version
    # that drops it is a change the gate judges.
    answer_format: AnswerFormat = "free_text"


@dataclass(frozen=True)
class PromptPassage:
    index: int
    doc_id: str
    text: str
    title: str | None = None


@dataclass(frozen=True, kw_only=True)
class Prompt:
    name: str
    version: str
    description: str
    changelog: str
    system: str
    user: str
    params: ModelParams
    content_hash: str
    purpose: PromptPurpose = "answer"
    path: Path | None = field(default=None, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(
        self, question: str, passages: list[PromptPassage], history: list[ChatMessage] | None = None
    ) -> list[dict[str, str]]:
        """Chat messages as the model takes them: system, earlier turns, then the user turn with the passages.
        Templates see ``history`` as the ``ChatMessage`` list (``turn.role``, ``turn.content``). A rewrite prompt
        quotes the history in its own template: its turns are text to rewrite from, never messages the model takes
        as instructions."""
        variables = {"question": question, "passages": passages, "history": history or []}
        messages = [{"role": "system", "content": _template(self.system).render(variables).strip()}]
        if self.purpose == "answer":
            messages.extend(message.as_dict() for message in history or [])
        messages.append({"role": "user", "content": _template(self.user).render(variables).strip()})
        return messages


def require_purpose(prompt: Prompt, purpose: PromptPurpose) -> Prompt:
    """``prompt``, when it is for ``purpose``: an answer prompt where a rewrite prompt is wanted (or the reverse)
    would render without what it needs."""
    if prompt.purpose != purpose:
        raise PromptError(f"{prompt.ref} has purpose {prompt.purpose!r}; one with purpose {purpose!r} is wanted here")
    return prompt


def _environment() -> jinja2.Environment:
    # Autoescape off: the output is a chat prompt, not HTML. Undefined variables raise.
    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)


@functools.lru_cache(maxsize=256)
def _template(source: str) -> jinja2.Template:
    """Compiled once per template text: compiling costs about 1 ms, on every request otherwise."""
    return _environment().from_string(source)


def parse_prompt(text: str, path: Path | None = None) -> Prompt:
    where = str(path) if path else "prompt"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PromptError(f"{where}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PromptError(f"{where}: expected a mapping")
    unknown = set(data) - {"name", "version", "description", "changelog", "params", "system", "user", "purpose"}
    if unknown:
        raise PromptError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    for key in ("name", "version", "system", "user"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise PromptError(f"{where}: '{key}' must be a non-empty string")
    if not _NAME.match(data["name"]) or not _VERSION.match(data["version"]):
        raise PromptError(f"{where}: name must match {_NAME.pattern} and version {_VERSION.pattern}")
    used: set[str] = set()
    for key in ("system", "user"):
        try:
            used |= jinja2.meta.find_undeclared_variables(_environment().parse(data[key]))
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(f"{where}: template '{key}' line {exc.lineno}: {exc.message}") from exc
    if used - PROVIDED_VARIABLES:
        raise PromptError(
            f"{where}: unknown template variable(s): {', '.join(sorted(used - PROVIDED_VARIABLES))} "
            f"(provided: {', '.join(sorted(PROVIDED_VARIABLES))})"
        )
    purpose = data.get("purpose", "answer")
    if purpose not in REQUIRED_VARIABLES:
        raise PromptError(f"{where}: purpose must be one of {', '.join(REQUIRED_VARIABLES)}")
    if REQUIRED_VARIABLES[purpose] - used:
        missing = ", ".join(sorted(REQUIRED_VARIABLES[purpose] - used))
        raise PromptError(f"{where}: {purpose} templates must use {missing}")
    params = _params(data.get("params") or {}, where)
    return Prompt(
        name=data["name"],
        version=data["version"],
        description=str(data.get("description", "")),
        changelog=str(data.get("changelog", "")),
        system=data["system"],
        user=data["user"],
        params=params,
        content_hash=hashlib.sha256(text.encode()).hexdigest()[:16],
        purpose=purpose,
        path=path,
    )


_PARAMS = ("temperature", "max_tokens", "stop", "seed", "answer_format")


def _params(raw: Any, where: str) -> ModelParams:
    if not isinstance(raw, dict) or set(raw) - set(_PARAMS):
        raise PromptError(f"{where}: params takes {', '.join(_PARAMS)}")
    answer_format = raw.get("answer_format", "free_text")
    if answer_format not in ANSWER_FORMATS:
        raise PromptError(f"{where}: answer_format must be one of {', '.join(ANSWER_FORMATS)}")
    try:
        params = ModelParams(
            temperature=float(raw.get("temperature", 0.0)),
            max_tokens=int(raw.get("max_tokens", 256)),
            stop=tuple(str(s) for s in raw.get("stop", ())),
            seed=None if raw.get("seed", 0) is None else int(raw.get("seed", 0)),
            answer_format=answer_format,
        )
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{where}: bad params: {exc}") from exc
    if not 0 <= params.temperature <= 2 or not 1 <= params.max_tokens <= 4096:
        raise PromptError(f"{where}: temperature must be in [0, 2] and max_tokens in [1, 4096]")
    return params


def load_prompt(name: str, version: str, root: Path = PROMPTS_DIR) -> Prompt:
    if not _NAME.match(name) or not _VERSION.match(version):
        raise PromptError(f"no prompt {name}@{version}")
    path = root / name / f"{version}.yaml"
    if not path.is_file():
        raise PromptError(f"no prompt {name}@{version} (expected {path})")
    prompt = parse_prompt(path.read_text(encoding="utf-8"), path)
    if (prompt.name, prompt.version) != (name, version):
        raise PromptError(f"{path}: declares {prompt.ref}, expected {name}@{version}")
    return prompt


def list_versions(name: str, root: Path = PROMPTS_DIR) -> list[str]:
    def order(version: str) -> tuple[int, str]:
        digits = re.match(r"v(\d+)", version)
        return (int(digits.group(1)) if digits else 0, version)

    return sorted((p.stem for p in (root / name).glob("v*.yaml")), key=order)
