# The README's two commands: `make demo` and `make test`. Both install what they need on a fresh
# Debian 12 machine (system packages via apt, Python packages into .venv) and then run.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
BUILD  ?= build/core
# graphviz: tests/python/test_graph_pictures.py; chromium and chromium-driver: the HTML report's
# browser test (tests/python/test_report_browser.py).
SYSTEM_PACKAGES = libboost-fiber-dev libboost-context-dev libgtest-dev cmake ninja-build g++ graphviz chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-cpp test-python test-versions sanitize sanitize-python thread-safety bench bench-quick bench-progress deps install clean

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

# The Python suite runs on three pytest-xdist workers, a test file per worker at a time (--dist
# loadfile: a file's fixtures, its Dask cluster or Ray instance, stay in one process). Most tests wait
# on a fresh interpreter of their own, so workers overlap the waits on the 2-core machine: one
# worker 10.8 min (session 12); session 22, once the leak check stopped collecting after every
# test, two workers 3:58 and three 3:14 (four 3:03: not worth more overcommit).
# `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 3
PYTEST_PARALLEL = $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

test-python: install
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test: test-cpp test-python

# The Python suite on the other supported CPythons (CI runs this after `make test`).
VERSIONS ?= 3.12 3.13
test-versions: deps
	@set -e; for v in $(VERSIONS); do \
	  py=$$(.ci/find-python $$v); echo "== CPython $$v ($$py)"; \
	  [ -x .venv-$$v/bin/python ] || $$py -m venv .venv-$$v; \
	  .venv-$$v/bin/python -m pip install -q --upgrade pip; \
	  .venv-$$v/bin/python -m pip install -q ".[test]"; \
	  .venv-$$v/bin/python -m pytest -q $(PYTEST_PARALLEL); \
	done

# ASan+UBSan over the fiber engine, TSan over the thread-level core (see tests/cpp/README.md).
sanitize: deps
	cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDISTAFF_BUILD_TESTS=ON -DDISTAFF_BUILD_PYTHON=OFF -DDISTAFF_ASAN=ON -DDISTAFF_UBSAN=ON
	cmake --build build/asan -j2
	ctest --test-dir build/asan --output-on-failure -j2
	cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDISTAFF_BUILD_TESTS=ON -DDISTAFF_BUILD_PYTHON=OFF -DDISTAFF_TSAN=ON
	cmake --build build/tsan -j2
	ctest --test-dir build/tsan --output-on-failure -j2 -R Threads

# Clang's thread-safety analysis over the core: the lock annotations (which mutex guards which
# member, cpp/include/distaff/thread_annotations.hpp) checked with -Wthread-safety -Werror. Syntax
# only, against libc++, whose std::mutex and std::lock_guard carry the annotations (libstdc++'s do
# not); Boost 1.74's headers need the type traits C++20 removed from libc++. Optional, not in CI;
# installs clang-14 and libc++ from Debian on first use.
THREAD_SAFETY_PACKAGES = clang-14 libc++-14-dev libc++abi-14-dev
thread-safety:
	@missing=""; for p in $(THREAD_SAFETY_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi
	@set -e; for f in cpp/src/*.cpp cpp/src/detail/*.cpp; do echo "  clang -Wthread-safety $$f"; \
	  clang++-14 -std=c++20 -stdlib=libc++ -D_LIBCPP_ENABLE_THREAD_SAFETY_ANNOTATIONS \
	    -D_LIBCPP_ENABLE_CXX20_REMOVED_TYPE_TRAITS -DDISTAFF_ENABLE_ASSERTS=1 -Icpp/include -Icpp/src \
	    -fsyntax-only -Wthread-safety -Werror $$f; done

# The Python suite against an ASan+UBSan build of the extension (Debug, build/asan-py, installed into
# .venv-asan); CI runs it after `make sanitize`: ~9 min with its build (session 22: the two passes
# below 4:24 on three workers and 2:07, the build ~2 min; 14 min in session 21 on two workers and
# the leak check's collections after every test). CPython is not instrumented,
# so the ASan runtime is preloaded, with libstdc++ (ASan's __cxa_throw interceptor must find it when
# it starts), and PYTHONMALLOC=malloc puts Python objects on ASan's heap too. detect_leaks=0: CPython
# is not leak-clean. ASan reports go to build/asan-py/logs (a test's subprocess may die of one without
# the test noticing): any report there fails the target, whatever pytest said. UBSan (GCC's separate
# libubsan) ignores log_path and writes to stderr, hence --capture=sys: what C code writes to fd 2
# (UBSan, the core's assertions) stays visible when the pytest process dies of it. Stack variables are
# not instrumented (DISTAFF_ASAN_STACK=OFF: see CMakeLists.txt); `make sanitize` covers them. Extra
# pytest arguments: `make sanitize-python SANITIZE_PYTEST='tests/python/test_nested_waits.py'`.
# Two passes: the files whose tests call os.fork (SANITIZE_SERIAL, found by grep) run in one pytest process, since
# the fork cases hang more often under ASan at two workers' load (GCC 12's libasan and fork, below)
# and a hang fails the CI; everything else runs on SANITIZE_WORKERS pytest-xdist workers, a file per worker at a
# time. (One process for all of it took 21 min in session 18's CI.) SANITIZE_PYTEST, when given,
# replaces both passes with one serial run of what it names.
ASAN_PY   := .venv-asan/bin/python
ASAN_LOGS := $(CURDIR)/build/asan-py/logs
SANITIZE_PYTEST ?=
SANITIZE_WORKERS ?= 3
SANITIZE_SERIAL ?= $(sort $(shell grep -rlw 'os\.fork' tests/python --include='*.py'))
# Deselected here: test_default_engine_after_fork_in_the_child_works_or_errors_clearly and
# stress/test_what_held.py::test_fork_storm_while_busy (an ASan limit, not a distaff bug): they fork
# while workers allocate, and GCC 12's libasan does not hold its allocator's locks across fork, so the
# child can deadlock in ASan's malloc (the storm hung one CI run in session 4). For the same reason
# test_fork.py::test_timeouts_fire_in_a_child_forked_after_the_parent_used_them: the parent forks just
# after a call returned, while its worker and timer threads still allocate; the child's first new
# threads then wait for ASan's allocator lock forever (10 of 20 runs of the ASan build in session 11,
# gdb: both in AsanThread::Init -> calloc; 0 of 30 on the normal build, which `make test` runs).
# And test_fork.py::test_a_child_forked_by_a_body_can_fork_again (the child starts an engine's
# threads, then forks again): it hung once under ASan in session 12's CI run 4 at two pytest workers'
# load, passed 3 of 3 alone under ASan and always on the normal build.
# And the [inline] variants of test_fork.py's forked-body tests (a body run by the main thread's f(x)
# forks at once, while the engine's workers, started a moment before, are still in AsanThread::Init:
# the same lock, 4 of 21 such cases hung under ASan in session 17 with no report; the normal build,
# which `make test` runs, passes them). Since session 21 the [fiber] variants too: their children
# start threads (the child's engine) as well, and hung in 3 of ~140 runs under ASan (gdb: the child's
# new threads in AsanThread::Init -> calloc, waiting for an allocator region lock that a parent
# thread held at the fork; with PYTHONMALLOC=malloc every allocation goes through that allocator);
# 0 of 200 on the normal build.
# Also deselected: the Dask and Ray executor tests and examples (executors_dask, executors_ray): they
# exercise those runtimes (Ray's own C++ daemons, Dask's worker processes) under an ASan preload,
# not distaff's C++ code, which test_executors.py covers through the process pool; a worker that
# segfaults on purpose (ASan reports the SEGV, by design, and exits 1 instead of dying of the
# signal); and the memory figures of 10k executions in flight and 10k suspended ones (ASan's
# allocator has redzones).
# And the AsyncFlow layer's ProcessPoolExecutor cases (a spawn-context pool: its fresh children
# inherit the ASan preload without the build's options and die of SIGSEGV at start-up or hang;
# `make test` runs them): test_bodies_run_on_the_backends_executor_threads_and_processes and
# docs/examples/asyncflow_features.py.
# And the import after the static TLS block was used up (static_tls_block): the sanitizer runtimes
# (libasan, libubsan) themselves need static TLS, so the ASan build cannot load there at all;
# `make test` runs it on the normal build.
# And the HTML report's browser test (report_browser): the ASan preload would be inherited by
# chromedriver and Chromium, which are not distaff code; `make test` runs it.
SANITIZE_DESELECT ?= test_default_engine_after_fork_in_the_child_works_or_errors_clearly or executors_dask or executors_ray or report_browser \
  or test_a_segfaulting_worker_fails_only_its_execution or test_10k_executions_in_flight_cost_under_2_kib_each \
  or test_10k_suspended_executions_cost_under_6_kib_each or test_10k_sleepers_cost_under_6_5_kib_each_at_their_peak_after_they_end \
  or test_bodies_run_on_the_backends_executor_threads_and_processes or asyncflow_features \
  or test_fork_storm_while_busy or static_tls_block or test_timeouts_fire_in_a_child_forked_after_the_parent_used_them \
  or child_forked_by_a_body
$(ASAN_PY):
	$(PYTHON) -m venv .venv-asan
	$(ASAN_PY) -m pip install -q --upgrade pip
sanitize-python: deps $(ASAN_PY)
	$(ASAN_PY) -m pip install -q ".[test]" -C build-dir=build/asan-py -C cmake.build-type=Debug -C install.strip=false \
	  -C cmake.define.DISTAFF_ASAN=ON -C cmake.define.DISTAFF_UBSAN=ON -C cmake.define.DISTAFF_ASAN_STACK=OFF
	@so=$$(ls $$($(ASAN_PY) -c 'import sysconfig; print(sysconfig.get_path("platlib"))')/distaff/_core*.so); \
	  ldd $$so | grep -q libasan || { echo "$$so is not an ASan build"; exit 1; }
	rm -rf $(ASAN_LOGS) && mkdir -p $(ASAN_LOGS)
	@set +e; \
	preload="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libstdc++.so)"; \
	asan_pytest() { LD_PRELOAD="$$preload" PYTHONMALLOC=malloc \
	  ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1:log_path=$(ASAN_LOGS)/asan \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(ASAN_PY) -m pytest -q --capture=sys $(if $(strip $(SANITIZE_DESELECT)),-k "not ($(strip $(SANITIZE_DESELECT)))") "$$@"; }; \
	if [ -n "$(strip $(SANITIZE_PYTEST))" ]; then asan_pytest $(SANITIZE_PYTEST); rc=$$?; \
	else asan_pytest -n $(SANITIZE_WORKERS) --dist loadfile $(addprefix --ignore=,$(SANITIZE_SERIAL)); rc=$$?; \
	  asan_pytest $(SANITIZE_SERIAL); rc2=$$?; [ $$rc -ne 0 ] || rc=$$rc2; fi; \
	reports=$$(grep -l -E 'ERROR: (Address|Leak)Sanitizer|CHECK failed' $(ASAN_LOGS)/* 2>/dev/null); \
	for f in $$reports; do echo "==== $$f"; cat $$f; done; \
	if [ -n "$$reports" ]; then echo "sanitize-python: sanitizer reports above (pytest exit $$rc)"; exit 1; fi; \
	exit $$rc

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
	$(PY) bench/progress_overhead.py --quick --json build/progress-quick.json

# progress=False costs nothing: W1 over 100k executions, with and without the argument, in one run
# (writes bench/results/progress.json; docs/observability.md quotes it).
bench-progress: install
	$(PY) bench/progress_overhead.py

clean:
	rm -rf build $(VENV) .venv-3.* .venv-asan
