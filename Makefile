# m365-policyd — every set-up step a fresh Debian machine needs lives here.
#   make run    create .venv, install, start the daemon on the example config
#   make test   create .venv, install test needs (and Debian's postfix/prometheus as root), run every test,
#               then the unit tests again on Debian's libraries and under every other supported Python
#   make quick  lint, types and every test but the real-Postfix, Debian package and slow ones (the inner loop)
#   make deb    build dist/m365-policyd_VERSION_all.deb with Debian's tools (installs them as root)
#   make dist   build the sdist and the wheel into dist/ and check them with twine
#   make bench  measure the SPEC §9 targets, write BENCHMARKS.md
#   make fuzz   coverage-guided fuzzing of the policy protocol (atheris, FUZZ_SECONDS=300)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= contrib/m365-policyd.example.toml
DEB_SOURCE := m365-policyd
# What the tests drive for real, and Debian's own libraries the unit tests run on a second time.
DEBIAN_PACKAGES := postfix libsasl2-modules prometheus swaks postsrsd systemd \
	python3-venv python3-twisted python3-cryptography python3-prometheus-client
# What `make deb` builds with (debian/control Build-Depends), and lintian for the package test.
DEB_BUILD_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-wheel lintian
# `make deb` builds in a copy of the tree without these (venvs, caches, earlier builds).
DEB_EXCLUDES := --exclude-vcs --exclude='./.venv*' --exclude=./build --exclude=./dist \
	--exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
	--exclude=.ruff_cache --exclude=.hypothesis --exclude=./bench-results

.PHONY: run test quick lint typecheck unit matrix system-deps deb-deps apt-install deb dist bench fuzz \
	clean venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && rm -rf $(VENV) && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
	  $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian packages the end-to-end tests drive for real, the libraries of the second unit run and
# the package build's tools. Installed only when running as root; otherwise those tests skip
# with a reason (and fail when CI is set).
system-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEBIAN_PACKAGES) $(DEB_BUILD_PACKAGES)"

deb-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEB_BUILD_PACKAGES)"

apt-install:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else \
	  echo "not root: skipping Debian packages ($(PACKAGES)); the tests that need them will be skipped"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

# The unit tests (all but the postfix, deb and slow markers) once more on Debian's python3-twisted,
# python3-cryptography and python3-prometheus-client, and under every other Python that
# setup.cfg's classifiers list (found on PATH or in pyenv); absent ones are reported.
matrix: $(STAMP)
	$(PY) -m tests.matrix

# The whole suite and the matrix run side by side: the real-Postfix, package and abuse tests
# mostly wait (on Postfix, dpkg, timeouts) while the matrix's runs use the CPU. Each prints its
# output whole when it ends (--output-sync), and `make test` fails if either failed.
test: system-deps $(STAMP) lint typecheck
	@echo "running the whole suite (make unit) and the matrix (make matrix) side by side; each prints its output when it ends"
	@$(MAKE) --no-print-directory -j2 --output-sync=target unit matrix

quick: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q -m "not postfix and not slow and not deb"

# The Debian package, built by debhelper/pybuild in a copy of this tree with Debian's own
# Python and libraries (PATH without venvs or pyenv), written to dist/.
deb: deb-deps
	rm -rf build/deb && mkdir -p build/deb/$(DEB_SOURCE) dist
	tar -cf - $(DEB_EXCLUDES) . | tar -xf - -C build/deb/$(DEB_SOURCE)
	cd build/deb/$(DEB_SOURCE) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH= \
	  dpkg-buildpackage --build=binary --no-sign
	rm -f dist/m365-policyd_*_all.deb
	mv build/deb/m365-policyd_*_all.deb dist/
	@ls -l dist/m365-policyd_*_all.deb

# The sdist and the wheel (python3 -m build, isolated), checked as PyPI would check them.
dist: $(STAMP)
	rm -f dist/m365_policyd-*
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/m365_policyd-*

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
	rm -rf $(VENV) $(VENV)-debian $(VENV)-py3.* build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
