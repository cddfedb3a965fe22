# The two commands a newcomer needs: `make run` and `make test`. Both set up .venv themselves.
VENV ?= .venv
FLAVOUR ?= cpu
PY := $(VENV)/bin/python

.PHONY: venv run test test-unit test-integration lint model clean

venv:
	@ELO_VENV=$(VENV) scripts/bootstrap.sh $(FLAVOUR)

run: venv ## Start the embedded default: local Ray, demo model, cloud (vLLM) + edge (CPU) replicas.
	$(VENV)/bin/elo run

test: venv ## Lint, then unit tests (one worker per core) and integration tests (real Ray Serve, vLLM, transformers).
	$(VENV)/bin/ruff check orchestrator deployments tests
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -ra --durations=5 -n auto tests/unit
	$(PY) -m pytest -ra --durations=15 tests/integration

test-unit: venv
	$(PY) -m pytest -q -ra -n auto tests/unit

test-integration: venv
	$(PY) -m pytest -q -ra tests/integration

lint: venv
	$(VENV)/bin/ruff check orchestrator deployments tests
	$(VENV)/bin/lint-imports

model: venv ## Build (or reuse) the demo model in the cache folder.
	$(VENV)/bin/elo model build

clean:
	rm -rf $(VENV) .pytest_cache
