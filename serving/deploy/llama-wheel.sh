#!/usr/bin/env bash
# Builds llama-cpp-python once as a portable wheel and prints the directory that holds it.
#
# Why not plain `pip install`: pip builds llama.cpp with -march=native, and a wheel made on a CPU with AVX-512 or
# AMX dies with SIGILL on one without (or on a VM whose OS does not enable AMX). pip's wheel cache does not key
# on CMAKE_ARGS either, so an old native wheel would be reused silently. So the build flags live here, in one
# place (the Makefile and the Dockerfile both call this script), pip's cache is bypassed, and the wheel lands in
# a directory named by the version and a hash of the flags: a wheel built with other flags is never picked up.
#
# The flags: the x86-64 baseline of the last decade (AVX2, FMA, F16C, BMI2), AVX-512 and AMX off, no llava/mtmd
# library (not used; its build is a third of the time). docs/guides/deployment.md ("The llama.cpp build") has the
# measurements behind choosing this over ggml's runtime-dispatched variants (GGML_CPU_ALL_VARIANTS).
#
# Usage: llama-wheel.sh PYTHON WHEEL_ROOT  (prints WHEEL_ROOT/llama_cpp_python-VERSION-FLAGHASH)
set -euo pipefail
python=${1:?usage: llama-wheel.sh PYTHON WHEEL_ROOT}
root=${2:?usage: llama-wheel.sh PYTHON WHEEL_ROOT}
version=0.3.36
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
flags="$flags -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
flags="$flags -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
key=$(printf '%s %s' "$version" "$flags" | sha256sum | cut -c1-12)
dir="$root/llama_cpp_python-$version-$key"
if ! ls "$dir"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  mkdir -p "$dir.partial"
  echo "building llama-cpp-python $version (portable: $flags); a few minutes, once" >&2
  CMAKE_ARGS="$flags" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$python" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
    --wheel-dir "$dir.partial" "llama-cpp-python==$version" >&2
  printf '%s\n' "$flags" > "$dir.partial/CMAKE_ARGS"
  rm -rf "$dir" && mv "$dir.partial" "$dir"  # whole or absent: an interrupted build leaves only .partial
fi
printf '%s\n' "$dir"
