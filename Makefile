# embedding_api: `make run` serves MODEL_PATH, `make test` passes the tests. `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TINY_MODEL := models/tiny-random
TINY_FAMILIES := models/tiny-families
DEMO_MODELS := Qwen3-VL-Embedding-2B=$(TINY_MODEL),qwen3-embedding=$(TINY_FAMILIES)/qwen3-embedding,siglip=$(TINY_FAMILIES)/siglip,siglip2=$(TINY_FAMILIES)/siglip2,hidden-state=$(TINY_FAMILIES)/causal-lm

.DEFAULT_GOAL := help
.PHONY: help install install-dev run download demo demo-model test lint bench bench-adapter clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-ray.txt
	$(PIP) install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime ## create .venv with the runtime dependencies

install-dev: $(VENV)/.dev ## add the test and lint tools

run: install ## serve MODEL_PATH (from .env or the environment) on HOST:PORT
	$(PY) -m embedding_api

download: install ## download MODEL_PATH's hub id into models/<name> and print the MODEL_PATH line for .env
	$(PY) -m embedding_api download

demo-model: install ## build the tiny random checkpoints in models/ (Qwen3-VL, Qwen3-Embedding, SigLIP, SigLIP2, a causal LM)
	grep -qs '"embedding_api_random_weights": true' $(TINY_MODEL)/config.json || $(PY) -m devtools.tiny_checkpoint $(TINY_MODEL)
	test -f $(TINY_FAMILIES)/siglip2/config.json || $(PY) -m devtools.tiny_families $(TINY_FAMILIES)

demo: demo-model ## serve every tiny random checkpoint at once (meaningless vectors: shows the API only)
	MODELS=$(DEMO_MODELS) $(PY) -m embedding_api

test: install-dev ## run the test suite (what CI runs)
	$(PY) -m pytest; status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

lint: install-dev ## ruff and mypy
	$(VENV)/bin/ruff check embedding_api devtools tests bench
	$(VENV)/bin/ruff format --check embedding_api devtools tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install ## throughput: in-process ceiling, this server and the naive server (writes docs/benchmarks.md)
	$(PY) -m bench.throughput

bench-adapter: install ## only the in-process ceiling of the adapter
	$(PY) -m bench.throughput --ceiling-only

.PHONY: bench-infinity
bench-infinity: install-dev ## ours vs Infinity on the same Qwen3-Embedding checkpoint (needs ../.venv-infinity; writes docs/benchmarks.md)
	$(PY) -m bench.vs_infinity

.PHONY: bench-rerank
bench-rerank: install-dev ## rerank pairs/s: this server vs the official one-pair-per-pass loop (writes docs/benchmarks.md)
	$(PY) -m bench.rerank

.PHONY: bench-forward
bench-forward: install-dev ## what each CPU kernel choice buys, in-process, one taken back at a time (writes docs/benchmarks.md)
	$(PY) -m bench.forward

.PHONY: bench-batch bench-priority
bench-batch: install-dev ## the batch command vs the server fed by 32 clients, same checkpoint (writes docs/benchmarks.md)
	$(PY) -m bench.batch_job

bench-priority: install ## interactive query latency under a bulk flood, with and without priorities (writes docs/benchmarks.md)
	$(PY) -m bench.priority

.PHONY: bench-vllm
bench-vllm: install ## ours vs vLLM's CPU build, same checkpoint and tokens (needs ../.venv-vllm-cpu; writes docs/benchmarks.md)
	$(PY) -m bench.vs_vllm

clean: ## remove caches (keeps .venv and models/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache test-artifacts
