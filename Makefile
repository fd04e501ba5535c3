# The two set-up commands of the README:
#   make serve   installs the service into .venv and serves the shipped weights on port 8000
#   make test    installs the service with its test tools (and Chromium for the web-page test) and runs the tests
VENV ?= .venv
PYTHON ?= python3
PORT ?= 8000

.PHONY: serve test browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/python -m app --host 0.0.0.0 --port $(PORT)

# Debian's Chromium drives the web-page test; without it (not root, no apt) that one test skips.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium), for the web-page test"; \
	else echo "installing Debian's chromium for the web-page test (apt-get, about a minute)"; \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1 && echo "chromium installed") \
		|| echo "chromium could not be installed (needs root and apt): the web-page test will be skipped"; fi

# Progress as dots with a percentage, the 15 slowest tests at the end, and why any test skipped.
test: $(VENV)/.installed-dev browser
	$(VENV)/bin/python -m pytest -q --durations=15
