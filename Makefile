# `make run` and `make test` set everything up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test processes: the suite mostly waits (validity periods, outages, restarts), so more
# processes than cores; each test file runs whole in one of them.
TEST_WORKERS ?= 4

.PHONY: run test lint proto bench soak demo mutate clean db-stop

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start the embedded PostgreSQL (unless DATABASE_URL is set), the MTA stub and the delivery service.
run: $(STAMP)
	$(PY) -m tools.run_pair

## Run the whole suite against a real PostgreSQL (embedded unless DATABASE_URL is set).
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## Regenerate the committed code of the protos.
proto: $(STAMP)
	PYTHON=$(PY) tools/gen_protos.sh

## ruff, mypy, and a check that the generated code matches the protos.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	PYTHON=$(PY) tools/gen_protos.sh
	git diff --exit-code -- protos || (echo "generated code is stale: run make proto and commit" && exit 1)
	test -z "$$(git status --porcelain -- protos)" || (git status --porcelain -- protos; echo "untracked generated code: run make proto and commit"; exit 1)

## A demo delivery of 3,000 recipients through the stub's seeded mix, live (needs `make run`; its database unless DATABASE_URL is set).
demo: $(STAMP)
	url="$${DATABASE_URL:-$$($(PY) -m tools.run_pair database-url)}" && \
		DATABASE_URL="$$url" $(PY) -m campaign_cli.demo

## Benchmarks (not part of make test).
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

## Soak (not part of make test): deliveries back to back under the seeded mix with all the stub's faults on for SOAK_MINUTES, sampling memory, descriptors, connections, table sizes, GetKpis p99 and the ingest rate every minute; fails if a delivery is not exact.
SOAK_MINUTES ?= 60
soak: $(STAMP)
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

## Mutation testing of the pure-Python core with the unit tests: scores and survivors, fails under 90 % (not part of make test).
mutate: $(STAMP)
	rm -rf mutants
	$(PY) -m mutmut run
	$(PY) -m tools.mutation_report

## Stop the embedded PostgreSQL under ./.data.
db-stop: $(STAMP)
	$(PY) -m tools.embedded_pg stop

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
