# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PORT ?= 8501

.PHONY: run test install browser bench clean

run: install ## create .venv if needed, install, open the dashboard on the bundled sample
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: install browser ## install the test extras and run every test
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest

install: $(STAMP)

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# The browser tests drive Debian's Chromium (it cannot be downloaded by Playwright here).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bench: install ## the benchmarks that BENCHMARKS.md records
	$(PY) benchmarks/bench_scan.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_schedules.py
	$(PY) benchmarks/bench_diagnostics.py
	$(PY) benchmarks/bench_export.py
	$(PY) benchmarks/bench_engine.py --threads 2

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
