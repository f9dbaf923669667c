# The two commands of the README: `make demo` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test gate setup host docs bench image clean

# A virtualenv with flowtape installed editable, plus test tools.
$(VENV)/.installed: pyproject.toml capture/decode/_http1.c capture/decode/_http2.c capture/decode/_http_rows.c capture/decode/_dns.c capture/decode/_tls.c capture/live/_ring.c capture/importers/_pcap.c analyze/export/_wire.c
	bash scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	touch $@

setup: $(VENV)/.installed

# System packages the eBPF and network tests need (root on Debian; prints what it skipped otherwise).
host: setup
	@if [ -f scripts/setup-host.sh ]; then bash scripts/setup-host.sh "$(VENV)"; fi

# The main job on the bundled fixture tape: a 5-minute recording of a 6-node cluster with incidents.
DEMO := fixtures/synth-incident.tape
demo: setup
	$(BIN)/flowtape info $(DEMO)
	$(BIN)/flowtape report topology $(DEMO) --by workload --top 12
	$(BIN)/flowtape report latency $(DEMO) --since 2024-03-03T02:00:30Z --until 2024-03-03T02:01:00Z
	$(BIN)/flowtape report traffic $(DEMO) --by zone
	$(BIN)/flowtape report dns $(DEMO)

# Every test (eBPF tests included when run as root; under CI=true they must not skip), then
# the regression gate on the fixture tapes.
test: host
	$(BIN)/python -m pytest
	FLOWTAPE=$(BIN)/flowtape bash scripts/regression-gate.sh

gate: setup
	FLOWTAPE=$(BIN)/flowtape bash scripts/regression-gate.sh

docs: setup
	$(BIN)/flowtape schema --markdown > docs/schema.md

# The node image with podman (deploy/build-image.sh: mmdebstrap base, wheels by the venv's pip).
image: setup
	PYTHON=$(BIN)/python bash deploy/build-image.sh

bench: setup
	$(BIN)/python benchmarks/bench_tape.py

clean:
	rm -rf $(VENV) .pytest_cache
