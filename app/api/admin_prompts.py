"""Admin routes for prompt labels: ``GET /v1/admin/prompts``, ``POST /v1/admin/prompts/{name}/labels/{label}``
(promote) and ``.../rollback``. Each notes what it did for the audit trail.

Labels are live state (``serving.loop.labels``): a label moved here is moved in the state store, and every replica
answering with it serves the new version within ``label_refresh_s``; the release (the version's hash) and the
label are also written to this replica's registry.yaml, as ``ragops prompts promote`` does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import Admin, ServicesDep
from app.api.errors import ApiError, ErrorResponse, error_responses
from app.api.middleware import note_admin_action
from app.container import Services
from prompts.loader import PromptError
from prompts.registry import PromptRegistry
from serving.contracts.answer import PromptInfo
from serving.loop.labels import StoreLabels

router = APIRouter(tags=["admin"], responses=error_responses(400, 401, 403, 429))

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The key or label cannot change so: the message says why."}
}
LABELS_APPLY = (
    "labels are live: every server answering with this label serves the new version within label_refresh_s "
    "(servers with live_labels off: from their next restart)"
)


class LabelPromotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=64, description="The version the label is to name (released by this).")


class LabelChange(BaseModel):
    name: str
    label: str
    version: str
    previous: str | None = Field(description="The version the label named before.")
    hash: str
    applies: str = Field(LABELS_APPLY, description="When servers answer with the change.")


class PromptEntry(BaseModel):
    name: str
    versions: list[str]
    labels: dict[str, str]
    released: list[str]


class PromptListing(BaseModel):
    prompts: list[PromptEntry]
    served: PromptInfo = Field(description="The prompt this server answers with now (its stable one).")
    labels_apply: str = LABELS_APPLY


@router.get("/v1/admin/prompts", response_model=PromptListing)
def list_prompts(services: ServicesDep, caller: Admin) -> PromptListing:
    """Prompts, their versions, labels and released versions, and the one this server answers with."""
    note_admin_action("prompts.list", "*")
    registry = _registry(services).with_labels(StoreLabels(services.state))
    with _prompt_errors():
        entries = [
            PromptEntry(
                name=name,
                versions=registry.versions(name),
                labels=registry.labels(name),
                released=sorted(registry.released(name)),
            )
            for name in registry.names()
        ]
    served = services.pipeline.prompt_for(None)
    return PromptListing(
        prompts=entries, served=PromptInfo(name=served.name, version=served.version, hash=served.content_hash)
    )


@router.post("/v1/admin/prompts/{name}/labels/{label}", response_model=LabelChange, responses=error_responses(404, 503))
def promote_label(name: str, label: str, body: LabelPromotion, services: ServicesDep, caller: Admin) -> LabelChange:
    """Point ``label`` at a version, releasing it (its file is frozen from then on)."""
    note_admin_action("prompts.promote", f"{name}@{label}", {"version": body.version})
    registry = _known_prompt(services, name)
    labels = StoreLabels(services.state)
    with _prompt_errors():
        prompt = registry.promote(name, body.version, label)
    previous = labels.release(prompt, label, caller.key_id)
    return LabelChange(name=name, label=label, version=prompt.version, previous=previous, hash=prompt.content_hash)


@router.post(
    "/v1/admin/prompts/{name}/labels/{label}/rollback",
    response_model=LabelChange,
    responses={**error_responses(404, 503), **_CONFLICT},
)
def rollback_label(name: str, label: str, services: ServicesDep, caller: Admin) -> LabelChange:
    """Return ``label`` to the version it named before."""
    note_admin_action("prompts.rollback", f"{name}@{label}")
    registry, labels = _known_prompt(services, name), StoreLabels(services.state)
    with _prompt_errors():
        labels.adopt_declared(registry)
        version = labels.rollback_target(name, label)  # the live history, canary decisions included
        if version is None:
            raise ApiError(409, f"label {label!r} of {name!r} has no earlier version to roll back to", param="label")
        previous = labels.labels(name).get(label)
        prompt = registry.promote(name, version, label)  # registry.yaml follows (bookkeeping)
    labels.move(name, label, version, caller.key_id, "rollback")
    note_admin_action("prompts.rollback", f"{name}@{label}", {"version": version, "previous": previous})
    return LabelChange(name=name, label=label, version=version, previous=previous, hash=prompt.content_hash)


def _registry(services: Services) -> PromptRegistry:
    return PromptRegistry(services.settings.prompts_dir)


def _known_prompt(services: Services, name: str) -> PromptRegistry:
    """The registry, once ``name`` is a prompt it holds (checked before any path is built from the name)."""
    registry = _registry(services)
    with _prompt_errors():
        names = registry.names()
    if name not in names:
        raise ApiError(404, f"no prompt {name!r}", param="name")
    return registry


@contextmanager
def _prompt_errors() -> Iterator[None]:
    """An unknown version, a bad label, an edited release: 400; a registry that cannot be written: 503."""
    try:
        yield
    except PromptError as exc:
        raise ApiError(400, str(exc)) from exc
    except OSError as exc:
        raise ApiError(503, f"the prompt registry cannot be written: {exc.strerror or exc}") from exc
