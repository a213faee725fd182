# Two commands do everything: `make reproduce` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= tiny
SEED   ?= 0
OUT    ?= runs/$(PRESET)-seed$(SEED)

.PHONY: setup reproduce test browser clean

# The stamp is remade whenever pyproject.toml changes, so `make test` after a dependency bump reinstalls.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

reproduce: setup
	$(VENV)/bin/zj reproduce --preset $(PRESET) --seed $(SEED) --out $(OUT)

# The browser test drives Debian's chromium through Playwright (Playwright's own browser download is not reachable
# on every machine); the CJK fonts make its screenshots of Chinese dialogues legible.
browser:
	@dpkg -s chromium fonts-noto-cjk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium fonts-noto-cjk; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo apt-get install -y -q chromium fonts-noto-cjk; \
	  else echo "make test needs Debian's chromium and fonts-noto-cjk: apt-get install chromium fonts-noto-cjk"; exit 1; fi; }

test: setup browser
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
