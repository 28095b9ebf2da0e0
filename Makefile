# mt: `make demo` trains and translates on the built-in pair (offline, a few minutes on 2 cores);
# `make test` runs the test suite (CI calls it through .ci/run); `make bench` prints JSON figures.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# where torch comes from when none is installed: empty = pip's configuration (PyPI: on Linux x86 a
# CUDA build); e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for the small CPU-only build
TORCH_INDEX ?=
MT     := $(BIN)/mt
DEMO   := runs/demo
# a trained Transformer run (and the Multi30k folder) for the serve and CTranslate2 benchmarks:
#   make bench BENCH_RUN=runs/m30k BENCH_M30K=../shared/data/multi30k
BENCH_RUN  ?=
BENCH_M30K ?= ../shared/data/multi30k

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch 2.13.0 where none is installed (pinned: a bare `torch` may pull whatever build is newest)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# test files run in parallel, one per worker (a file's fixtures stay in one process); each test
# uses one torch thread, so one worker per core: `make test TEST_WORKERS=0` runs them in one process
TEST_WORKERS ?= auto

test: install
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

demo: install
	rm -rf $(DEMO)
	$(MT) data synthetic --dest data/synthetic
	$(MT) train recipes/demo.yaml --run-dir $(DEMO)
	$(MT) translate -m $(DEMO) --beam 5 -i data/synthetic/test.src -o $(DEMO)/test.hyp
	@echo "--- first translations (source / output / reference):"
	@paste -d '\n' data/synthetic/test.src $(DEMO)/test.hyp data/synthetic/test.tgt | head -9
	$(MT) evaluate --hyp $(DEMO)/test.hyp --ref data/synthetic/test.tgt --metrics bleu,chrf,ter

bench: install
	$(BIN)/python benchmarks/translate_speed.py
	$(BIN)/python benchmarks/translate_speed.py --int8 --ref-sentences 0 --breakdown none
	$(BIN)/python benchmarks/decode_ablations.py
	$(BIN)/python benchmarks/train_speed.py --ablations
	$(BIN)/python benchmarks/data_scale.py --sizes 100000 --work $(or $(BENCH_DATA),/tmp/mt-bench-data)
	@if [ -z "$(BENCH_RUN)" ]; then \
		echo "make bench: serve_load.py and ctranslate2_speed.py skipped: they need a trained run" \
		     "(make bench BENCH_RUN=runs/m30k)"; \
	else \
		$(BIN)/python benchmarks/serve_load.py $(BENCH_RUN) --data $(BENCH_M30K) --requests 200 \
			--concurrency 1,8,64 --max-seconds 60 && \
		$(BIN)/python benchmarks/ctranslate2_speed.py $(BENCH_RUN) --data $(BENCH_M30K) --lines 200; \
	fi

clean:
	rm -rf $(VENV) runs data/synthetic .pytest_cache
