# The two commands of the README, and helpers for development.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# make kafka BROKERS=3: a replicated cluster (ports 9092-9094) instead of one broker
BROKERS ?= 1

.PHONY: demo pipeline-demo test lint kafka clickhouse clean prereqs

# Installs the package (editable, with the server, test and integrations extras) into .venv.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[server,test,integrations]'
	touch $@

prereqs:
	@bash infra/prereqs.sh

## demo: install, then run the tracker (runstream server) with 24 demo runs logged into it, and print its URL
demo: $(VENV)/.installed
	$(BIN)/runstream server --demo

## pipeline-demo: install, then run the cluster pipeline end to end (Kafka -> Faust -> ClickHouse) on simulated runs
pipeline-demo: prereqs $(VENV)/.installed
	$(BIN)/python -m infra.pipeline_demo

## test: install, then run the whole test suite (it starts its own Kafka broker)
test: prereqs $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff (lint and format check) and mypy, configured in pyproject.toml; seconds, no services
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy finds a module by its directory's name, and sdk/ is `runstream` (package-dir in pyproject.toml):
	@# lay the packages out under their import names, as links, and name the real files in its report.
	@rm -rf build/typecheck && mkdir -p build/typecheck/runstream
	@ln -s $(CURDIR)/sdk/* $(CURDIR)/api $(CURDIR)/storage $(CURDIR)/streams build/typecheck/runstream/
	$(BIN)/mypy > build/typecheck/report.txt; status=$$?; \
	sed -E 's#build/typecheck/runstream/(api|storage|streams)/#\1/#; s#build/typecheck/runstream/#sdk/#' \
	    build/typecheck/report.txt; exit $$status

## kafka: a Kafka broker on 127.0.0.1:9092 with the pipeline's topics, until Ctrl-C
kafka: prereqs $(VENV)/.installed
	$(BIN)/python -m infra.kafka_broker --port 9092 --brokers $(BROKERS)

## clickhouse: ClickHouse (served by chdb) on 127.0.0.1:8123 for several processes, until Ctrl-C
clickhouse: $(VENV)/.installed
	$(BIN)/python -m infra.clickhouse_server --data-dir .data/clickhouse --http-port 8123

## ui: rebuild the web UI's bundle (api/ui, committed) from its sources in web/, with the API's types
## regenerated from its OpenAPI document first (web/openapi.json, web/src/api-types.ts); needs Node 18+ and npm
ui: $(VENV)/.installed
	$(BIN)/python web/openapi_dump.py
	cd web && npm ci && npm run types && npm run build

clean:
	rm -rf $(VENV) .data build *.egg-info
