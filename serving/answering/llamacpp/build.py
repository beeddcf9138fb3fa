"""Which llama.cpp build runs: the library's version and the instruction sets its CPU backend was compiled for.

A build compiled for instructions the machine lacks dies with SIGILL at the first matrix product (or at load), so
``ragops doctor`` and the tests read this, and eval results record it: two builds decode differently enough to
move a metric (issue 20: citation accuracy 0.692 against 0.731 with nothing else changed), so the gate compares
results of one build only. Reading it loads the native library: call it in the worker process, not the API's.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

# Instruction sets beyond the portable baseline (serving/deploy/llama-wheel.sh): present in a build made with
# -march=native on a recent server CPU, and fatal on a machine (or a VM's OS) without them.
BEYOND_BASELINE = frozenset(
    {"AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_INT8", "AMX_BF16", "AMX_TILE"}
)
_FEATURE = re.compile(r"([A-Z][A-Z0-9_]*) = 1")


class LlamaBuild(BaseModel):
    """What ``llama_print_system_info()`` says of the loaded library, and its version."""

    model_config = ConfigDict(frozen=True)

    library: str
    features: tuple[str, ...]

    @classmethod
    def parse(cls, library: str, system_info: str) -> LlamaBuild:
        """From the library's system-info line (``CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | ...``): the CPU
        backend's section, features switched on."""
        cpu = system_info.split("CPU :", 1)[1] if "CPU :" in system_info else system_info
        cpu = cpu.split(" : ", 1)[0]  # a later backend's section starts "NAME : "
        return cls(library=library, features=tuple(sorted(set(_FEATURE.findall(cpu)))))

    @property
    def beyond_baseline(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f in BEYOND_BASELINE)

    @property
    def variant(self) -> str:
        """A short name: ``portable`` for the baseline build, else the extra instruction sets it needs."""
        extra = self.beyond_baseline
        return "portable" if not extra else "native:" + "+".join(extra)

    @property
    def label(self) -> str:
        """What results and lineage record: ``llama-cpp-python 0.3.36 portable (AVX,AVX2,...)``."""
        return f"llama-cpp-python {self.library} {self.variant} ({','.join(self.features)})"


def loaded_build() -> LlamaBuild:
    """The build this process has loaded (loads it: call in the worker)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return LlamaBuild.parse(str(llama_cpp.__version__), text)
