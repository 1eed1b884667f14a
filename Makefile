# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REPO   ?= model_repository
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve stack test demo-model lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml client/pyproject.toml
	$(BIN)/pip install --quiet -e ./client -e '.[training,triton,dev]'
	touch $@

install: $(STAMP)

# The demo family is built once; delete model_repository/demo_* to rebuild it.
$(REPO)/demo_image/1/model.pt: | $(STAMP)
	$(BIN)/python -m training.demo --repository $(REPO)

demo-model: $(STAMP)
	$(BIN)/python -m training.demo --repository $(REPO) --force

serve: $(REPO)/demo_image/1/model.pt
	$(BIN)/focalserve serve --host $(HOST) --port $(PORT) --model-repository $(REPO)

# `docker compose up` without Docker: tritonserver (CPU, python backend) + gateway as processes.
DEMO_CHECKPOINT := runs/demo/focallens/checkpoints/latest.pt
stack: $(REPO)/demo_image/1/model.pt
	$(BIN)/focalserve export --family focallens --model focalserve-tiny --checkpoint $(DEMO_CHECKPOINT) \
		--name demo --repository .stack/model_repository --backend python
	HOST=$(HOST) PORT=$(PORT) deploy/stack.sh

# The search tests run on the trained demo family, so the suite builds it first (once).
test: $(REPO)/demo_image/1/model.pt
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check server training client tests

clean:
	rm -rf $(VENV) .pytest_cache
