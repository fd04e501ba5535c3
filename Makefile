# The two set-up commands of the README:
#   make serve   installs the service (the base install: no torch) into .venv and serves the shipped weights on port 8000
#   make test    installs everything (training's torch, the test tools, Chromium for the web-page test) and runs the tests
VENV ?= .venv
PYTHON ?= python3
PORT ?= 8000

.PHONY: serve test test-tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q -e '.[train,gpu,dev]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/python -m app --host 0.0.0.0 --port $(PORT)

# Debian packages that some tests drive: Chromium (the web-page test), podman, mmdebstrap and runc
# (the container test), and WordNet's database (the tag map's rebuild). Without root and apt they
# cannot be installed, and those tests skip, saying why.
TEST_TOOLS = chromium podman mmdebstrap runc
test-tools:
	@missing=""; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	[ -f /usr/share/wordnet/data.noun ] || missing="$$missing wordnet-base"; \
	if [ -z "$$missing" ]; then echo "test tools present: $(TEST_TOOLS) wordnet-base"; \
	else echo "installing Debian's$$missing for the web-page, container and tag-map tests (apt-get, about a minute)"; \
		(apt-get update -qq && apt-get install -y -qq $$missing >/dev/null 2>&1 && echo "installed:$$missing") \
		|| echo "could not install$$missing (needs root and apt): the tests that need them will be skipped"; fi

# Progress as dots with a percentage, the 15 slowest tests at the end, and why any test skipped.
test: $(VENV)/.installed-dev test-tools
	$(VENV)/bin/python -m pytest -q --durations=15
