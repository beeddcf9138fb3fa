"""What leaves the machine (telemetry destinations), and what is in production (the prompt versions the server
answers with, the models) with the evals and gates that ran exactly that prompt content."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from app.compliance.model import WARNING, Control, Deployment, Verdict, failed, passed
from prompts.loader import Prompt, PromptError
from prompts.registry import PromptRef, PromptRegistry

if TYPE_CHECKING:
    from app.settings import Settings
    from evals.results import EvalResults
    from serving.infra.state_store import StateStore

LANGSMITH_DEFAULT_ENDPOINT = "https://api.smith.langchain.com"


def telemetry_destinations(settings: Settings) -> list[str]:
    """Where traces and other data are sent, one line each (never a key)."""
    traces, found = settings.traces, []
    if traces.langsmith_api_key or traces.langsmith_endpoint:
        endpoint = traces.langsmith_endpoint or LANGSMITH_DEFAULT_ENDPOINT
        state = "sending" if traces.tracing else "configured, but tracing=false: nothing is sent"
        found.append(f"LangSmith traces: {endpoint}, project {traces.langsmith_project} ({state})")
    if traces.otlp_endpoint:
        found.append(
            f"OpenTelemetry spans (OTLP/HTTP): {traces.otlp_endpoint}/v1/traces, service {traces.otel_service_name}"
        )
    if settings.judge.base_url and settings.judge.share > 0:
        found.append(
            f"judge LLM: {settings.judge.base_url} scores {settings.judge.share:.0%} of served answers "
            "(question, passages, answer)"
        )
    if settings.generator == "vllm" and settings.vllm.base_url:
        found.append(f"generator: {settings.vllm.base_url} (vLLM server: questions and passages)")
    return found + _stores_elsewhere(settings)


def _stores_elsewhere(settings: Settings) -> list[str]:
    """The service's own stores when they are servers of their own: data goes to them too (hosts only, never
    credentials)."""
    from urllib.parse import urlsplit

    stores = [("state store (keys, audit trail, kept answers)", settings.database_url),
              ("Redis (rate limits; cached answers with answer_cache_backend=redis)", settings.redis_url),
              ("Qdrant server (documents and their vectors)", settings.qdrant.url)]  # fmt: skip
    return [f"{what}: {urlsplit(url).hostname}" for what, url in stores if url]


def check_telemetry(deployment: Deployment) -> Verdict:
    settings = deployment.settings
    destinations = telemetry_destinations(settings)
    if not destinations:
        return passed("none: nothing leaves the machine (no LangSmith, no OTLP endpoint, no remote judge or model, "
                      "no store on another server)")  # fmt: skip
    evidence = list(destinations)
    if not settings.traces.trace_redact and any("traces" in d or "spans" in d for d in destinations):
        evidence.append(f"{WARNING}trace_redact=false: traced inputs and outputs leave unredacted")
    return passed(f"{len(destinations)} destination(s), listed below", *evidence)


@dataclass(frozen=True)
class _ServedLabels:
    """The labels a server answers with: the state store's live ones, else registry.yaml's (which a server
    adopts at start); registry.yaml's alone with live_labels off."""

    state: StateStore | None
    registry: PromptRegistry

    def labels(self, name: str) -> dict[str, str]:
        from serving.loop.labels import StoreLabels

        declared = self.registry.declared_labels(name)
        return {**declared, **StoreLabels(self.state).labels(name)} if self.state is not None else declared


def served_prompts(settings: Settings, state: StateStore) -> list[tuple[str, Prompt]]:
    """(what for, prompt) of the stable prompt and the canary's, as a server would resolve them now."""
    registry = PromptRegistry(settings.prompts_dir)
    registry = registry.with_labels(_ServedLabels(state if settings.live_labels else None, registry))
    refs = [("production", settings.prompt)] + ([("canary", settings.canary.prompt)] if settings.canary.prompt else [])
    served = []
    for role, ref in refs:
        parsed = PromptRef.parse(ref)
        if role == "canary" and not parsed.is_version and parsed.selector not in registry.labels(parsed.name):
            continue  # a canary label nobody set yet is no canary (LivePrompts says the same)
        served.append((role, registry.resolve(parsed)))
    return served


def committed_baselines() -> list[tuple[str, EvalResults]]:
    """The eval results committed with the suites (``evals/baselines``): the gate's reference runs."""
    from evals.results import ResultsError, read_results

    folder = Path(str(resources.files("evals").joinpath("baselines")))
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append((path.stem, read_results(path)))
        except ResultsError:
            continue  # not a results file: not evidence
    return found


def _generator(settings: Settings) -> str:
    if settings.generator == "vllm":
        return f"vllm, model {settings.vllm.model}"
    if settings.generator == "extractive":
        return "extractive (no model)"
    from app.parts import llamacpp_model_path
    from serving.infra.file_hashes import sha256_of

    try:
        gguf = llamacpp_model_path(settings)
        return f"llamacpp, {gguf.name} sha256 {sha256_of(gguf)[:12]}"
    except OSError as exc:
        return f"llamacpp, model unavailable: {exc}"


@dataclass(frozen=True)
class PromptLineage:
    """A served prompt's lineage as evidence lines, and how many evals ran exactly its content."""

    evidence: list[str]
    evaluations: int


def prompt_lineage(
    role: str, prompt: Prompt, state: StateStore, baselines: list[tuple[str, EvalResults]]
) -> PromptLineage:
    """The version's eval runs, gates and releases in the state store (``ragops lineage``'s lines), and the
    committed baselines that ran its content."""
    from app.cli.lineage import summary
    from serving.loop.lineage import Lineage, evaluated_by

    events = [
        e for e in Lineage(state).history(prompt.name, prompt.version) if e.kind in ("eval_run", "gate", "release")
    ]
    ran_this = set(evaluated_by(events, prompt.content_hash))
    lines = [
        f"{role} lineage #{e.seq} {e.ts:%Y-%m-%d} {e.kind}{' (this content)' if e.seq in ran_this else ''}: "
        f"{summary(e)}"
        for e in events
    ]
    same = [(suite, results) for suite, results in baselines if results.prompt.hash == prompt.content_hash]
    for suite, results in same:
        models = results.lineage.models if results.lineage is not None else None
        ran = f", {models.generator_model} {(models.generator_sha256 or '')[:12]}" if models is not None else ""
        lines.append(f"{role} committed baseline {suite} ({results.timestamp[:10]}): {results.generator}{ran}")
    return PromptLineage(evidence=lines, evaluations=len(ran_this) + len(same))


def check_production_lineage(deployment: Deployment) -> Verdict:
    settings = deployment.settings
    try:
        served = served_prompts(settings, deployment.state)
    except PromptError as exc:
        return failed(f"the production prompt does not resolve: {exc}")
    baselines = committed_baselines()
    evidence = [
        f"generator: {_generator(settings)}",
        f"embedder: {settings.embedding.embedding_model} ({settings.embedding.embedder})",
    ]
    unevaluated = []
    for role, prompt in served:
        lineage = prompt_lineage(role, prompt, deployment.state, baselines)
        evidence += [f"{role} prompt: {prompt.ref}, content hash {prompt.content_hash}", *lineage.evidence]
        if not lineage.evaluations:
            unevaluated.append(prompt.ref)
    if unevaluated:
        return failed(f"no eval run or gate on record ran the content of {', '.join(unevaluated)}", *evidence)
    versions = ", ".join(f"{role} {prompt.ref}" for role, prompt in served)
    return passed(f"{versions}: each one's content evaluated (eval runs, gates or committed baselines)", *evidence)


TELEMETRY = Control(
    id="telemetry",
    title="Telemetry destinations listed",
    checks="Lists where traces and other data leave the machine (LangSmith, OTLP, a remote judge or model); "
    "informational: it passes, with none meaning nothing leaves the machine.",
    check=check_telemetry,
)
PRODUCTION_LINEAGE = Control(
    id="production-lineage",
    title="Production versions and their lineage",
    checks="The prompt versions in production (and the canary's) and the models, each prompt's content with at "
    "least one eval run or gate on record (the state store's lineage, or a committed baseline).",
    check=check_production_lineage,
)
