# itcare-token-operator — developer entry points.
#   make demo   local control plane + Keycloak + operator; watch the token Secret refresh
#   make test   lint, type-check, unit tests, then the tests on the real environment
#   make publish REGISTRY=host[:port][/path]   push the signed image and OCI chart (scripts/publish)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all venv lint unit components test test-env reliability demo bench bench-smoke bench-peers bench-foreign lock mutation publish clean

all: test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python >= 3.11 is required (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests scripts bench
	$(VENV)/bin/mypy

# The fast tier renders the chart with helm and lints the release workflow with
# actionlint: both are built once (cached) from the Go module proxy.
unit: $(STAMP)
	scripts/build-components helm
	scripts/build-components actionlint
	$(VENV)/bin/pytest -m "not env" -q

components:
	scripts/build-components all

test-env: $(STAMP) components
	$(VENV)/bin/pytest -m env -q

test: lint unit bench-smoke test-env

reliability: $(STAMP) components
	$(VENV)/bin/pytest -m reliability -q
	$(PY) scripts/reliability_report.py

demo: $(STAMP) components
	scripts/demo

bench: $(STAMP) components
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench.run

# External Secrets Operator's Webhook generator beside ours (docs/bench/peers.md); about
# an hour for N = 100, 1,000 and 5,000. One N: make bench-peers PEERS_ARGS="--n 100"
bench-peers: $(STAMP) components
	scripts/build-eso
	$(PY) -m pip install -q -e '.[dev,bench]'
	nice -n 10 $(PY) -m bench.peers $(PEERS_ARGS)

bench-smoke: $(STAMP) components
	$(PY) -m bench.run --smoke

# Foreign Secrets beside ours (docs/bench/foreign.md): N = 1,000 credentials, 5,000
# foreign Secrets, some churning; about 17 minutes. Smaller: FOREIGN_ARGS="--n 100 ..."
bench-foreign: $(STAMP) components
	nice -n 10 $(PY) -m bench.foreign $(FOREIGN_ARGS)

# Mutation testing of the pure rule modules against their fast tests ([tool.mutmut] in
# pyproject.toml; scores and survivors in docs/mutation.md). mutmut 3 imports a package
# from ./ or src/ only, so it runs in build/mutation/ with operator/itcare_operator linked
# as src/itcare_operator; its mutated copies go to build/mutation/mutants/. Not part of
# make test: about 25 minutes on two shared cores.
MUTATION_DIR := build/mutation
mutation: $(STAMP)
	rm -rf $(MUTATION_DIR)
	mkdir -p $(MUTATION_DIR)/src $(MUTATION_DIR)/charts/itcare-token-operator
	ln -s ../../../operator/itcare_operator $(MUTATION_DIR)/src/itcare_operator
	ln -s ../../../../charts/itcare-token-operator/files \
	  $(MUTATION_DIR)/charts/itcare-token-operator/files
	for f in pyproject.toml tests crds; do ln -s ../../$$f $(MUTATION_DIR)/$$f; done
	cd $(MUTATION_DIR) && ../../$(VENV)/bin/mutmut run --max-children 2
	cd $(MUTATION_DIR) && ../../$(VENV)/bin/mutmut results

# The image's pinned, hashed runtime dependencies (the Dockerfile installs from it).
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --universal \
	  --python-version 3.11 -o requirements.lock

# A release: the image by digest and the chart at oci://$(REGISTRY)/charts/itcare-token-operator,
# both signed with cosign (COSIGN_KEY), the SBOM attached; the release workflow calls this.
publish: $(STAMP)
	@test -n "$(REGISTRY)" || { echo "usage: make publish REGISTRY=host[:port][/path]"; exit 2; }
	PYTHON=$(abspath $(PY)) scripts/publish $(REGISTRY)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
