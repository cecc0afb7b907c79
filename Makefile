# The README's two commands: `make demo` and `make test`. Both build their own
# virtual environment from pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint bench browser clean stress

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/millimetric-nb demo

# ruff, then mypy over the package (settings in pyproject.toml: [tool.mypy])
lint: venv
	$(BIN)/ruff check millimetric_nb tests benchmarks
	$(BIN)/mypy millimetric_nb

test: venv lint
	$(BIN)/python -m pytest -q

# The long proofs of RELIABILITY.md (`pytest -m slow`; `make test` runs them too, at
# their CI size) and every Hypothesis test (pytest's `hypothesis` mark) under the
# "stress" profile (tests/conftest.py: 10,000 examples where a test does not fix its
# own number, the hostile frames included), and
# schemathesis at 500 generated requests per operation and mode.
stress: venv
	HYPOTHESIS_PROFILE=stress MM_SCHEMATHESIS_EXAMPLES=500 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -o timeout=3600 -m "slow or hypothesis"

# only the real-browser tests (JupyterLab + Playwright + /usr/bin/chromium); `test` runs them too.
# Screenshots land in artifacts/browser/.
browser: venv
	$(BIN)/python -m pytest -q tests/browser

bench: venv
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .millimetric .pytest_cache artifacts
