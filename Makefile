# Two entry points for a fresh machine:
#   make demo   set up .venv and run the main job (build a reference, map held-out cells, accuracy + UMAP)
#   make test   set up .venv (+ headless chromium for the report test) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# real datasets for the opt-in integration tests (skipped when absent)
SCCONCERTO_DATA ?= $(abspath ../shared/data)

.PHONY: setup demo test browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/scconcerto demo --out demo_out --overwrite

browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test of the HTML report will be skipped"; }

test: setup browser
	SCCONCERTO_DATA=$(SCCONCERTO_DATA) $(PY) -m pytest -q -p no:cacheprovider
