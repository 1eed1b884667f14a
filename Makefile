# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REPO   ?= model_repository
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve test demo-model lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml client/pyproject.toml
	$(BIN)/pip install --quiet -e ./client -e '.[training,triton,dev]'
	touch $@

install: $(STAMP)

# The demo family is built once; delete model_repository/demo_* to rebuild it.
$(REPO)/demo_image/config.pbtxt: | $(STAMP)
	$(BIN)/python -m training.demo --repository $(REPO)

demo-model: $(STAMP)
	$(BIN)/python -m training.demo --repository $(REPO) --force

serve: $(REPO)/demo_image/config.pbtxt
	$(BIN)/focalserve serve --host $(HOST) --port $(PORT) --model-repository $(REPO)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check server training client tests

clean:
	rm -rf $(VENV) .pytest_cache
