# The README's first two commands: `make demo` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export DGLBACKEND := pytorch
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
DEMO_OUT ?= demo-out
DEMO_WORKERS ?= 2

.PHONY: demo test bench clean-demo nightly-demo

$(VENV): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=24"
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(VENV)

demo: $(VENV)
	rm -rf $(DEMO_OUT)/run
	$(PY) -m recgoat_dist demo --config configs/demo.yaml --set cluster.num_workers=$(DEMO_WORKERS) --out $(DEMO_OUT)

# Nightly retraining on the synthetic timeline: init, 3 nights, a bad day, a rollback (DEMO_OUT/nightly).
nightly-demo: $(VENV)
	$(PY) -m recgoat_dist demo nightly --config configs/nightly.yaml --out $(DEMO_OUT)/nightly

test: $(VENV)
	$(PY) -m pytest tests

clean-demo:
	rm -rf $(DEMO_OUT)
