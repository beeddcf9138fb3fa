"""Build the red-team data from the attack datasets shipped in the PyPI package ``pyrit`` (read from its wheel,
never imported or installed).

Attacks: every jailbreak template (``pyrit/datasets/jailbreak/templates``, incl. the TrustAIRLab in-the-wild
set) with its ``{{ prompt }}`` slot filled by an AdvBench objective, and the prompt-injection seeds
(system-prompt extraction from garak and ps_fuzz, leakage). They are split by template, seeded: 50% become
the detector's bundled known attacks (``guardrails/attacks.jsonl``), 20% calibrate its threshold and 30% are
held out for the figures in docs/benchmarks.md (``bench/data/redteam.jsonl``, with a ``split`` field).

Run: ``.venv/bin/python bench/redteam.py`` (downloads the pyrit 1.1.0 wheel once into .ragops/cache).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYRIT = "pyrit==1.1.0"
ATTACKS = ROOT / "guardrails" / "attacks.jsonl"
HELD_OUT = ROOT / "bench" / "data" / "redteam.jsonl"
INJECTION_SEEDS = (
    "seed_datasets/local/garak/system_prompt_extraction.prompt",
    "seed_datasets/local/psfuzz_steal_system.prompt",
    "seed_datasets/local/airt/leakage.prompt",
    "seed_datasets/local/0din/placeholder_injection.prompt",
)


def pyrit_wheel() -> Path:
    cache = ROOT / ".ragops" / "cache" / "pyrit"
    wheels = sorted(cache.glob("pyrit-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), PYRIT], check=True
        )
        wheels = sorted(cache.glob("pyrit-*.whl"))
    return wheels[-1]


def _render(template: str, objective: str) -> str:
    text = re.sub(r"\{%\s*raw\s*%\}|\{%\s*endraw\s*%\}", "", template)
    return re.sub(r"\{\{\s*prompt\s*\}\}", objective, text).strip()


def build(wheel: Path, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    with zipfile.ZipFile(wheel) as archive:

        def load(name: str) -> Any:
            return yaml.safe_load(archive.read(f"pyrit/datasets/{name}"))

        objectives = [s["value"].strip() for s in load("seed_datasets/local/adv_bench.prompt")["seeds"]]
        templates = sorted(
            n for n in archive.namelist() if n.startswith("pyrit/datasets/jailbreak/templates/") and n.endswith(".yaml")
        )
        for name in templates:
            data = yaml.safe_load(archive.read(name))
            if not isinstance(data, dict) or "{{ prompt }}" not in str(data.get("value", "")).replace(
                "{{prompt}}", "{{ prompt }}"
            ):
                continue
            text = _render(str(data["value"]), rng.choice(objectives))
            records.append({"text": text, "kind": "jailbreak", "source": name.removeprefix("pyrit/datasets/")})
        for name in INJECTION_SEEDS:
            for i, item in enumerate(load(name)["seeds"]):
                records.append({"text": str(item["value"]).strip(), "kind": "injection", "source": f"{name}#{i}"})
    for record in records:
        record["id"] = "atk-" + hashlib.sha256(record["source"].encode()).hexdigest()[:10]
        draw = rng.random()
        record["split"] = "known" if draw < 0.5 else "calibration" if draw < 0.7 else "test"
    return records


def main() -> None:
    records = build(pyrit_wheel())
    header = {"_attribution": "From the PyPI package pyrit 1.1.0 (MIT, Microsoft), whose datasets credit their "
              "sources: jailbreakchat templates, TrustAIRLab in-the-wild jailbreaks (Shen et al., 2024), "
              "AdvBench objectives (Zou et al., 2023), garak (NVIDIA), ps_fuzz (Prompt Security)."}  # fmt: skip
    known = [r for r in records if r["split"] == "known"]
    ATTACKS.write_text(
        "\n".join(json.dumps({"id": r["id"], "text": r["text"], "source": r["source"]}) for r in known) + "\n",
        encoding="utf-8",
    )
    HELD_OUT.parent.mkdir(parents=True, exist_ok=True)
    held = [r for r in records if r["split"] != "known"]
    HELD_OUT.write_text("\n".join(json.dumps(r) for r in [header, *held]) + "\n", encoding="utf-8")
    print(f"{len(known)} known attacks -> {ATTACKS}; {len(held)} held out -> {HELD_OUT}")


if __name__ == "__main__":
    main()
