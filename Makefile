PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install install-cuda test test-gpu test-slow bench sweep clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[test]"
	touch .venv/.installed

# JAX with CUDA 13 (`CUDA=cuda12` for a CUDA 12 driver): pip install -e ".[test,cuda]"
install-cuda: .venv/.installed-$(or $(CUDA),cuda)

.venv/.installed-%: .venv/.installed
	$(PIP) install -e ".[test,$*]"
	touch $@

# two pytest workers (pytest-xdist): the suite is compile-bound and a 2-core machine has two
# cores to compile on; JOBS=1 runs it in one process
test: install
	$(PY) -m pytest -q -n $(or $(JOBS),2)

# the suite with the GPU as JAX's default backend (8 host CPU devices beside it for the
# fixed-size meshes, matmuls pinned to full f32: tests/conftest.py)
test-gpu: install-cuda
	COLLAPIPE_TEST_BACKEND=cuda $(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) -m benchmarks.run_all

sweep: install
	$(PY) -m collapipe_jax.cli sweep all --scale $(or $(SCALE),quick) --out $(or $(OUT),results)

clean:
	rm -rf .venv build *.egg-info .pytest_cache results
