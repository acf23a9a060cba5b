PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install test test-slow bench sweep clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[test]"
	touch .venv/.installed

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) -m benchmarks.run_all

sweep: install
	$(PY) -m collapipe_jax.cli sweep all --scale $(or $(SCALE),quick) --out $(or $(OUT),results)

clean:
	rm -rf .venv build *.egg-info .pytest_cache results
