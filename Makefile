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

lint: venv
	$(BIN)/ruff check millimetric_nb tests benchmarks

test: venv lint
	$(BIN)/python -m pytest -q

# The hostile-frames property tests at 10,000 examples (CI runs 2,000; the dry-run test a tenth).
stress: venv
	HYPOTHESIS_PROFILE=stress $(BIN)/python -m pytest -q -p no:cacheprovider -o timeout=3600 \
		tests/test_hostile_frames.py

bench: venv
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .millimetric .pytest_cache
