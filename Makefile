# The README's two commands: `make run` (embedded default) and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xz-setup-done

.PHONY: setup run test bench lint
setup: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt scripts/setup.sh
	bash scripts/setup.sh

run: $(STAMP)
	$(PY) -m scripts.run_embedded

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench_turn.py
