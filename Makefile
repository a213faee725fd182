# Two commands do everything: `make reproduce` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= tiny
SEED   ?= 0
OUT    ?= runs/$(PRESET)-seed$(SEED)

.PHONY: setup reproduce test clean

# The stamp is remade whenever pyproject.toml changes, so `make test` after a dependency bump reinstalls.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

reproduce: setup
	$(VENV)/bin/zj reproduce --preset $(PRESET) --seed $(SEED) --out $(OUT)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
