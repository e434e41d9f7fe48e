# The README's two commands: `make demo` and `make test`. Both install what they need on a fresh
# Debian 12 machine (system packages via apt, Python packages into .venv) and then run.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
BUILD  ?= build/core
SYSTEM_PACKAGES = libboost-fiber-dev libboost-context-dev libgtest-dev cmake ninja-build g++
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-cpp test-python test-versions sanitize bench bench-quick deps install clean

deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: deps $(PY)
	$(PY) -m pip install -q ".[test]"

demo: install
	$(PY) examples/demo.py

test-cpp: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISTAFF_BUILD_TESTS=ON -DDISTAFF_BUILD_PYTHON=OFF -DDISTAFF_WERROR=ON
	cmake --build $(BUILD) -j2
	ctest --test-dir $(BUILD) --output-on-failure -j2

test-python: install
	$(PY) -m pytest -q

test: test-cpp test-python

# The Python suite on the other supported CPythons (CI runs this after `make test`).
VERSIONS ?= 3.12 3.13
test-versions: deps
	@set -e; for v in $(VERSIONS); do \
	  py=$$(.ci/find-python $$v); echo "== CPython $$v ($$py)"; \
	  [ -x .venv-$$v/bin/python ] || $$py -m venv .venv-$$v; \
	  .venv-$$v/bin/python -m pip install -q --upgrade pip; \
	  .venv-$$v/bin/python -m pip install -q ".[test]"; \
	  .venv-$$v/bin/python -m pytest -q; \
	done

# ASan+UBSan over the fiber engine, TSan over the thread-level core (see tests/cpp/README.md).
sanitize: deps
	cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDISTAFF_BUILD_TESTS=ON -DDISTAFF_BUILD_PYTHON=OFF -DDISTAFF_ASAN=ON -DDISTAFF_UBSAN=ON
	cmake --build build/asan -j2
	ctest --test-dir build/asan --output-on-failure -j2
	cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDISTAFF_BUILD_TESTS=ON -DDISTAFF_BUILD_PYTHON=OFF -DDISTAFF_TSAN=ON
	cmake --build build/tsan -j2
	ctest --test-dir build/tsan --output-on-failure -j2 -R Threads

# The full benchmark suite against the competitors (installed into .venv-bench), ~15-20 min;
# writes bench/results/latest.json, docs/img/bench_*.png and docs/performance.md.
BENCH_PY := .venv-bench/bin/python
$(BENCH_PY):
	$(PYTHON) -m venv .venv-bench
bench: deps $(BENCH_PY)
	$(BENCH_PY) -m pip install -q -r bench/requirements.txt
	$(BENCH_PY) -m pip install -q . -C build-dir=build/bench
	$(BENCH_PY) bench/run.py

# A smoke subset (must finish, not meet a number): run by CI after `make test`.
bench-quick: install
	$(PY) bench/run.py --quick

clean:
	rm -rf build $(VENV) .venv-3.*
