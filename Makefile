# Two commands do all set-up on a fresh clone:
#   make run    install into .venv, index the catalog, answer example queries, serve the page
#   make test   install into .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CATALOG ?=

.PHONY: help install run test bench clean

help:
	@echo "make run     install into .venv, index the catalog (../shared/data/grocery, or CATALOG=folder-or.csv),"
	@echo "             answer example queries and serve the page at http://127.0.0.1:8000 (first run: 15-25 min"
	@echo "             on 2 cores; later runs reuse the catalog and detector built from the same photos)"
	@echo "make test    install into .venv and run the whole test suite"
	@echo "make bench   every benchmark (hours); results belong in docs/benchmarks.md"
	@echo "make clean   remove .venv and runs/"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, exactly this spec: a CPU build from a local file (any other spec pulls CUDA)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[torch,text,serve,ray,milvus,qdrant,dev]"
	touch $(STAMP)

install: $(STAMP)

# The page shows boxes from the demo's product detector when it was trained; the search itself
# uses the whole photo (cropping grocery phone photos to the detected box cost 0.11 mAP@1000).
run: install
	CATALOG="$(CATALOG)" $(BIN)/productlens demo --out runs/catalog
	$(BIN)/productlens serve runs/catalog $$(test -f runs/detector/detector.json && echo --detector runs/detector --search-whole)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_classify.py
	$(BIN)/python benchmarks/bench_audit.py
	$(BIN)/python benchmarks/bench_classify_scale.py
	$(BIN)/python benchmarks/bench_detect.py
	$(BIN)/python benchmarks/bench_multimodal.py
	$(BIN)/python benchmarks/bench_video.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_identify.py
	$(BIN)/python benchmarks/bench_ray.py --n 3000 --workers 2 --shard-size 250
	$(BIN)/python benchmarks/bench_milvus.py --n 100000

clean:
	rm -rf $(VENV) runs .pytest_cache
