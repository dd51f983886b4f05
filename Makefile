# Two entry points: `make demo` (install + the whole pipeline on built-in data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint browser clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pipeline quickstart

# Headless Chromium for the UI test (Debian package; Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: browser tests will skip"

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The long versions: kill/resume, 5,000-request load, full schemathesis, sabotaged training, torch.compile.
test-slow: $(STAMP) browser
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
