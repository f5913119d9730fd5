# Two commands do everything: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed
DEBIAN_TEST_PACKAGES := redis-server nginx chromium fonts-noto-color-emoji

.PHONY: install run test test-other-kernel test-fast bench system-deps clean features api screenshots

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q -e '.[parity]'
	@touch $@

# Debian packages the tests run for real (redis-server, nginx, chromium), when missing.
system-deps:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Prepare the default collection: the bundled models' features ship in features/;
# this only extracts what is missing or changed.
features: install
	$(BIN)/cbir index -m efficientnet_lite0,efficientnet_lite1,efficientnet_lite2

run: install
	CBIR_DEMO=$${CBIR_DEMO:-1} $(BIN)/python -m cbir.run

api: install
	CBIR_DEMO=$${CBIR_DEMO:-1} $(BIN)/cbir api

# Two workers, a whole test file at a time (--dist loadfile: a file's module and session
# servers start once; pytest 9.2 ignores xdist's group marks): most tests wait on servers,
# browsers and subprocesses, so two workers share 2 cores well.
test: $(TEST_STAMP) system-deps
	$(BIN)/python -m pytest -p no:cacheprovider --timeout=900 --durations=15 -n 2 --dist loadfile
	@$(MAKE) --no-print-directory test-other-kernel

# The numerical tests again on OpenBLAS's Haswell kernels (what an AMD EPYC machine gets; an
# AVX-512 Xeon picks SkylakeX ones): float32 products differ in the last bits by kernel and
# batch size, so tests of two computation paths compare within stated tolerances, and this
# pass keeps them honest on a second kernel. Needs AVX2; skipped on CPUs without it.
NUMERIC_TESTS := tests/unit/test_experiments.py tests/unit/test_tuning.py tests/unit/test_comparisons.py tests/unit/test_evaluation.py \
	tests/unit/test_fusion.py tests/unit/test_rerank.py tests/unit/test_distances.py
test-other-kernel: $(TEST_STAMP)
	@if grep -qw avx2 /proc/cpuinfo; then \
	  echo "numerical tests on OpenBLAS's Haswell kernels:"; \
	  OPENBLAS_CORETYPE=Haswell $(BIN)/python -m pytest -p no:cacheprovider --timeout=900 -q -m "not milvus and not browser" $(NUMERIC_TESTS); \
	else echo "no AVX2: the second-kernel pass is skipped"; fi

# Refresh the README's screenshots (the only target that writes to docs/screenshots).
screenshots: $(TEST_STAMP) system-deps
	CBIR_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -p no:cacheprovider tests/integration/test_app_browser.py -k "search_by_collection_image or evaluate_page or pages_need_a_login or picker or map_page or first_result_row or hand_written_link or why_did_this_match"

# The unit tests only (engine, ranking, request parsing, cache key, distances, evaluation...: no
# server, no browser, no Keras model, no subprocess): under two minutes.
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider -q -n 2 -m "not slow" --timeout=300 tests/unit

bench: install
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq wrk >/dev/null || true; }
	$(BIN)/python bench/search.py
	$(BIN)/python bench/index.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/rerank.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/app.py
	$(BIN)/python bench/explain.py
	$(BIN)/python bench/normalisation.py
	$(BIN)/python bench/recipes.py
	$(BIN)/python -m pip install -q -e '.[parity]' && $(BIN)/python bench/parity.py

clean:
	rm -rf $(VENV) var models_cache .pytest_cache
