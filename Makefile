# Two commands for a new machine: `make demo` and `make test`. Both create .venv if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test bench torture lint clean

$(PY):
	python3 -m venv $(VENV)

demo: $(PY)
	$(PIP) install -q -e .
	$(VENV)/bin/txpy demo

# torch==2.13.0 is the CPU build on this project's machines; the ML libraries are test-only.
test: $(PY)
	$(PIP) install -q -e '.[test]' torch==2.13.0
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest

bench: $(PY)
	$(PIP) install -q -e '.[test,bench]' torch==2.13.0
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_notebooks.py
	$(PY) benchmarks/bench_background.py
	$(PY) benchmarks/bench_fidelity.py
	$(PY) benchmarks/bench_run.py

clean:
	rm -rf $(VENV) build *.egg-info

# ≥ 1000 random SIGKILLs of sessions and their capturing children, each followed by fsck and a
# load of every new commit (about 25 minutes; not in CI)
torture: $(PY)
	$(PIP) install -q -e '.[test]' torch==2.13.0
	$(PY) benchmarks/torture.py --kills 1000
