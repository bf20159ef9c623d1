# m365-policyd — every set-up step a fresh Debian machine needs lives here.
#   make run    create .venv, install, start the daemon on the example config
#   make test   create .venv, install test needs (and Debian's postfix/prometheus as root), run every test
#   make quick  lint, types and every test but the real-Postfix and slow ones (the inner loop)
#   make bench  measure the SPEC §9 targets, write BENCHMARKS.md
#   make fuzz   coverage-guided fuzzing of the policy protocol (atheris, FUZZ_SECONDS=300)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= contrib/m365-policyd.example.toml
DEBIAN_PACKAGES := postfix prometheus swaks postsrsd

.PHONY: run test quick lint typecheck unit system-deps bench fuzz clean venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && rm -rf $(VENV) && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
	  $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian packages the end-to-end tests drive for real. Installed only when running as root;
# otherwise those tests skip with a reason (and fail when CI is set).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else \
	  echo "not root: skipping Debian packages ($(DEBIAN_PACKAGES)); Postfix tests will be skipped"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: system-deps $(STAMP) lint typecheck unit

quick: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q -m "not postfix and not slow"

run: $(STAMP)
	@echo "m365-policyd: policy service on 127.0.0.1:10040, metrics on http://127.0.0.1:9464/metrics"
	@echo "Send it a request from another terminal:"
	@echo "  python3 -c 'import socket; s = socket.create_connection((\"127.0.0.1\", 10040)); s.sendall(b\"request=smtpd_access_policy\\nprotocol_state=RCPT\\nsender=john@fabrikam.com\\nrecipient=kate@tailspintoys.com\\ninstance=1\\n\\n\"); print(s.recv(4096).decode())'"
	@echo "Explain one envelope offline:"
	@echo "  $(VENV)/bin/m365-policyd check -c $(CONFIG) --sender john@fabrikam.com --recipient kate@tailspintoys.com"
	exec $(VENV)/bin/m365-policyd serve -c $(CONFIG)

# SPEC §9 figures in one run, written to BENCHMARKS.md with the machine's description.
bench: $(STAMP)
	$(PY) -m benchmarks.run

FUZZ_SECONDS ?= 300
FUZZ_CORPUS ?= $(VENV)/fuzz-corpus

fuzz: $(STAMP)
	$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install --quiet atheris
	mkdir -p $(FUZZ_CORPUS)
	$(PY) fuzz/fuzz_protocol.py -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzz/ $(FUZZ_CORPUS) tests/data/requests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
