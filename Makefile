# Two commands on a fresh machine with Python 3.11 and make: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test test-fast test-reliability clean-demo

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, so the pin resolves to the wheel the machine already has (CPU build here);
	# GPU users: install a CUDA build of the same release first (see README).
	$(PY) -m pip install -q --no-compile "torch==2.13.0"
	$(PY) -m pip install -q --no-compile -e ".[test]"
	# Byte-compiled on every CPU at once (pip compiles on one: 67 s -> 53 s on 2 cores), and
	# ahead: with PYTHONDONTWRITEBYTECODE set, each process would compile what it imports. Files
	# for newer Pythons fail here as they did under pip (torch ships one), harmlessly.
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') pix2pix jobs > /dev/null || true
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	$(PY) jobs/prepare.py
	@if [ -f jobs/train.py ]; then $(PY) jobs/train.py; fi
	@if [ -f jobs/translate.py ]; then $(PY) jobs/translate.py; fi
	$(PY) jobs/pack.py --overwrite
	@echo "look at the result: $(PY) jobs/view.py  (a map page on http://127.0.0.1:8000/)"

test: $(INSTALLED)
	$(PY) -m pytest

test-fast: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow"

test-reliability: $(INSTALLED)
	$(PY) -m pytest -m reliability

clean-demo:
	rm -rf "$${PIX2PIX_DEMO_ROOT:-$$HOME/.cache/pix2pix/demo-bucket}"
