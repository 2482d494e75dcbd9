# Only Python 3.11, pip and make are needed: uv is bootstrapped into .tools/.
PYTHON ?= python3
UV_VERSION ?= 0.13.9
UV := .tools/bin/uv
RUN := $(UV) run --frozen

.PHONY: serve test proto check-proto buf test-ts lint bench simulate image-dry-run clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen
	touch $@

serve: .venv/.synced  ## start the server on SQLite (./ltrr.db) with the demo policy
	$(RUN) ltrr serve $(ARGS)

test: .venv/.synced  ## the whole test suite (PostgreSQL tests skip when no server is reachable)
	$(RUN) pytest -q -n 2 $(ARGS)

proto: .venv/.synced  ## regenerate clients/python/ltrr/v1 from protos/
	$(RUN) python -m grpc_tools.protoc -I protos \
	  --python_out=clients/python --mypy_out=clients/python \
	  --grpc_python_out=clients/python --mypy_grpc_out=clients/python \
	  protos/ltrr/v1/*.proto

check-proto: proto
	git diff --exit-code -- clients/python/ltrr
	test -z "$$(git status --porcelain -- clients/python/ltrr)"

buf:  ## lint protos/ and check ltrr.v1's compatibility against protos/compat (npm installs buf)
	cd tools/buf && npm ci --no-audit --no-fund
	cd protos && ../tools/buf/node_modules/.bin/buf lint && ../tools/buf/node_modules/.bin/buf breaking --against compat/ltrr-v1.json

test-ts: .venv/.synced  ## the TypeScript client's tests against a real server (Node 20, npm)
	cd clients/typescript && npm ci --no-audit --no-fund && npm test

lint: .venv/.synced
	$(RUN) ruff check server clients tests bench deploy
	$(RUN) mypy

simulate: .venv/.synced
	$(RUN) ltrr simulate $(ARGS)

image-dry-run: .venv/.synced  ## follow the Dockerfile on this host (no engine needed), start it, health-check it
	.venv/bin/python deploy/dockerfile_dry_run.py $(ARGS)

bench: .venv/.synced
	$(RUN) python -m bench.run_all

clean:
	rm -rf .venv .tools ltrr.db*
