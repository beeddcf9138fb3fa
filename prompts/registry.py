"""The prompt registry: immutable prompt versions and movable labels.

``prompts/registry.yaml`` holds, per prompt, the content hash of every released version (a released file that
changes is refused: make a new version instead), the labels (``production``, ``staging``, ``canary``, any name)
and each label's history, so ``rollback`` returns a label to the version it pointed at before.

References: ``NAME`` (the production label), ``NAME@VERSION`` or ``NAME@LABEL``.

Labels resolve through a ``LabelSource``: by default the YAML's own labels (evals, tests and tools without a
state store); a server passes the state store's live labels (``serving.loop.labels.StoreLabels``), which start from
the YAML's and then move at run time (promotions, rollbacks) on every replica at once.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from prompts.loader import PROMPTS_DIR, Prompt, PromptError, list_versions, load_prompt, require_purpose

DEFAULT_LABEL = "production"
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_VERSION = re.compile(r"^v[0-9]")


@dataclass(frozen=True)
class PromptRef:
    name: str
    selector: str  # a version (v1, v2-short) or a label (production)

    @classmethod
    def parse(cls, ref: str) -> PromptRef:
        name, _, selector = ref.partition("@")
        if not name:
            raise PromptError(f"bad prompt reference {ref!r}: expected NAME[@VERSION|@LABEL]")
        return cls(name, selector or DEFAULT_LABEL)

    @property
    def is_version(self) -> bool:
        return bool(_VERSION.match(self.selector))


class LabelSource(Protocol):
    """Where a prompt's labels are read: label -> version."""

    def labels(self, name: str) -> dict[str, str]: ...


class PromptRegistry:
    def __init__(self, root: Path | None = None, labels: LabelSource | None = None) -> None:
        self.root = root or PROMPTS_DIR  # None: the shipped prompts (a ``prompts_dir`` setting left unset)
        self.path = self.root / "registry.yaml"
        self._labels: LabelSource = labels or DeclaredLabels(self)

    def with_labels(self, labels: LabelSource) -> PromptRegistry:
        """The same registry, its labels read from ``labels``."""
        return PromptRegistry(self.root, labels)

    # --- reading ----------------------------------------------------------------------------------------
    def _data(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"prompts": {}}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise PromptError(f"{self.path}: invalid YAML: {exc}") from exc
        if not isinstance(data.get("prompts", {}), dict):
            raise PromptError(f"{self.path}: 'prompts' must be a mapping")
        data.setdefault("prompts", {})
        return data

    def _entry(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        entry: dict[str, Any] = data["prompts"].setdefault(name, {})
        for key in ("released", "labels", "history"):
            entry.setdefault(key, {})
        return entry

    def names(self) -> list[str]:
        on_disk = {p.name for p in self.root.iterdir() if p.is_dir() and list(p.glob("v*.yaml"))}
        return sorted(on_disk | set(self._data()["prompts"]))

    def versions(self, name: str) -> list[str]:
        return list_versions(name, self.root)

    def labels(self, name: str) -> dict[str, str]:
        """The labels references resolve through (the label source's)."""
        return self._labels.labels(name)

    def declared_labels(self, name: str) -> dict[str, str]:
        """The labels registry.yaml declares (git's), whatever the label source says."""
        return dict(self._entry(self._data(), name)["labels"])

    def released(self, name: str) -> dict[str, str]:
        return dict(self._entry(self._data(), name)["released"])

    def history(self, name: str, label: str) -> list[str]:
        return list(self._entry(self._data(), name)["history"].get(label, []))

    def resolve(self, ref: str | PromptRef) -> Prompt:
        """The prompt a reference names; a released version whose file changed is refused."""
        parsed = PromptRef.parse(ref) if isinstance(ref, str) else ref
        entry = self._entry(self._data(), parsed.name)
        version = parsed.selector if parsed.is_version else self.labels(parsed.name).get(parsed.selector)
        if version is None:
            raise PromptError(f"prompt {parsed.name!r} has no label {parsed.selector!r}")
        prompt = load_prompt(parsed.name, version, self.root)
        expected = entry["released"].get(version)
        if expected is not None and expected != prompt.content_hash:
            raise PromptError(
                f"{prompt.path}: released as {expected}, now {prompt.content_hash}; released versions are "
                "immutable: restore the file and put the change in a new version"
            )
        return prompt

    def diff(self, name: str, a: str, b: str) -> str:
        left, right = (self.resolve(PromptRef(name, s)) for s in (a, b))
        assert left.path is not None and right.path is not None
        return "".join(
            difflib.unified_diff(
                left.path.read_text().splitlines(keepends=True),
                right.path.read_text().splitlines(keepends=True),
                fromfile=f"{name}@{left.version}",
                tofile=f"{name}@{right.version}",
            )
        )

    # --- writing ----------------------------------------------------------------------------------------
    def promote(self, name: str, version: str, label: str) -> Prompt:
        """Point ``label`` at ``version`` (releasing it: its hash is recorded and the file frozen)."""
        if not _LABEL.match(label) or _VERSION.match(label):  # NAME@v2 must always mean the version
            raise PromptError(f"bad label {label!r}: lowercase letters, digits, '-' or '_', not shaped like a version")
        prompt = self.resolve(PromptRef(name, version))  # validates, and refuses an edited release
        data = self._data()
        entry = self._entry(data, name)
        entry["released"][version] = prompt.content_hash
        current = entry["labels"].get(label)
        if current != version:
            if current is not None:
                entry["history"].setdefault(label, []).append(current)
            entry["labels"][label] = version
        self._write(data)
        return prompt

    def rollback(self, name: str, label: str) -> str:
        """Return ``label`` to the version it pointed at before; returns that version."""
        data = self._data()
        entry = self._entry(data, name)
        previous = entry["history"].get(label) or []
        if not previous:
            raise PromptError(f"label {label!r} of {name!r} has no earlier version to roll back to")
        version = previous.pop()
        entry["labels"][label] = version
        self._write(data)
        return str(version)

    def _write(self, data: dict[str, Any]) -> None:
        text = (
            "# Prompt registry: released versions (content hashes, immutable), labels, and label history.\n"
            "# Written by `ragops prompts promote|rollback`.\n" + yaml.safe_dump(data, sort_keys=True)
        )
        with tempfile.NamedTemporaryFile("w", dir=self.root, delete=False, suffix=".tmp") as tmp:
            tmp.write(text)
        Path(tmp.name).replace(self.path)


class DeclaredLabels:
    """The default label source: the labels registry.yaml declares."""

    def __init__(self, registry: PromptRegistry) -> None:
        self._registry = registry

    def labels(self, name: str) -> dict[str, str]:
        return self._registry.declared_labels(name)


class PromptSelector:
    """Which prompt answers a request: the stable one, or for a configured share of users the canary. The
    choice hashes the user (or session) id, so a user keeps seeing the same version; anonymous requests get the
    stable prompt."""

    def __init__(self, stable: Prompt, canary: Prompt | None = None, canary_share: float = 0.0) -> None:
        if not 0.0 <= canary_share <= 1.0:
            raise ValueError("canary_share must be within [0, 1]")
        self.stable = require_purpose(stable, "answer")
        self.canary = None if canary is None else require_purpose(canary, "answer")
        self.canary_share = canary_share

    def close(self) -> None:
        """Nothing to stop (the live selector has a refresh thread; both are closed alike)."""

    def __call__(self, user: str | None = None) -> Prompt:
        if self.canary is None or user is None or not self.canary_share:
            return self.stable
        return self.canary if user_bucket(user) < self.canary_share else self.stable


def user_bucket(user: str) -> float:
    """Where a user falls in [0, 1): the users below the canary share get the canary, as long as it runs."""
    return int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") / 2**64
