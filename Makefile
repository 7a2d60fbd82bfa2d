# Two commands: `make demo` runs Sluice end to end, `make test` passes the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-deploy test-other-pythons lint typecheck unit clean bench bench-quick

$(STAMP): pyproject.toml constraints.txt build-constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip==26.3'  # the pip the suite passed with (it has --build-constraint)
	$(BIN)/python -m pip install -q -c constraints.txt --build-constraint build-constraints.txt \
		-e '.[test]'  # the versions CI passed with
	$(BIN)/python -m pip install -q --no-deps 'httpbin==0.10.4'  # see pyproject.toml
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sluice-server demo

lint: install
	$(BIN)/ruff check agent server sluice tests bench
	$(BIN)/ruff format --check agent server sluice tests bench

typecheck: install
	$(BIN)/mypy agent server sluice tests bench

# The tests marked `postgres` (storage and API) run a second time against
# PostgreSQL when SLUICE_TEST_POSTGRES_URL names a server (.ci/run starts one).

# The suite runs in TEST_WORKERS processes (pytest-xdist; 0 runs it in one),
# except the tests marked `serial` (timing and per-MiB counts that another
# test's load would skew), which run alone after it.
TEST_WORKERS ?= 2

test: lint typecheck
	$(BIN)/python -m pytest -q -rs -n $(TEST_WORKERS) --dist worksteal -m "not deploy and not serial"
	@echo "== timing-sensitive tests, one at a time =="
	$(BIN)/python -m pytest -q -rs -m "serial and not deploy"
	@if [ -n "$$SLUICE_TEST_POSTGRES_URL" ]; then \
		echo "== storage and API tests on PostgreSQL =="; \
		SLUICE_TEST_DATABASE=postgres $(BIN)/python -m pytest -q -rs -n $(TEST_WORKERS) --dist worksteal -m "postgres and not serial" && \
		{ SLUICE_TEST_DATABASE=postgres $(BIN)/python -m pytest -q -rs -m "postgres and serial" || \
			[ $$? -eq 5 ]; }; \
	fi  # (pytest's status 5: no test selected; none is marked postgres and serial today)
	@echo "== deploy tests: images, systemd units, compose file (podman, as root) =="
	$(BIN)/python -m pytest -q -rs -m deploy tests/deploy

# The deploy tests (tests/deploy, marker `deploy`): both images built from the
# Dockerfiles, the systemd units under systemd 252, the compose example, all run
# with podman as root; skipped, with the reason, where podman is missing. They
# take minutes (less once the base image is cached), so they are `make test`'s
# last pass, and `make test-deploy` runs them alone.
test-deploy: install
	$(BIN)/python -m pytest -q -rs -m deploy tests/deploy

# The parallel pass again on Pythons other than the venv's (the images run
# 3.11; pip installs on any 3.11+): each of OTHER_PYTHONS, by default the
# newest 3.12 and 3.13 that pyenv holds here, in a venv of its own named by
# its full version (.venv-3.12.1, ...). Asyncio differs between them: since
# 3.12 a server's stop waits for every connection, and 3.12.0-3.12.8 and
# 3.13.0-3.13.1 have a writelines without flow control (sluice/gathered_write.py,
# whose tests bite only while the Python run here is one of those).
# SLUICE_TEST_OTHER_PYTHON lets the tests that run the agent under an unknown
# UID skip where that UID cannot start this interpreter (pyenv's, under a
# /root of mode 0700); on the venv's Python they fail instead. `.ci/run` runs
# this where such Pythons are found.
PYENV_VERSIONS ?= $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
OTHER_PYTHONS ?= $(foreach minor,3.12 3.13,$(shell ls -d $(PYENV_VERSIONS)/$(minor).[0-9]*/bin/python$(minor) 2>/dev/null | sort -V | tail -n 1))

test-other-pythons:
	@if [ -z "$(strip $(OTHER_PYTHONS))" ]; then \
		echo "no Python 3.12 or 3.13 found under $(PYENV_VERSIONS) (OTHER_PYTHONS): skipped"; fi
	@for py in $(OTHER_PYTHONS); do \
		version=$$($$py -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') && \
		$(MAKE) --no-print-directory install VENV=.venv-$$version PYTHON=$$py && \
		echo "== the suite's parallel pass on $$(.venv-$$version/bin/python -V) ==" && \
		SLUICE_TEST_OTHER_PYTHON=1 .venv-$$version/bin/python -m pytest -q -rs -p no:cacheprovider \
			-n $(TEST_WORKERS) --dist worksteal -m "not deploy and not serial" || exit 1; \
	done

unit: install
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

# Benchmarks (issue 5): not part of `make test`. `bench` writes docs/BENCHMARKS.md
# (about 11 minutes); `bench-quick` (under 2 minutes) checks the bench still runs.
# The full run's relay-cluster points need PostgreSQL: set SLUICE_BENCH_POSTGRES_URL
# (or SLUICE_TEST_POSTGRES_URL) to a server URL; without it they are skipped, with
# the reason in the report.
bench: install
	bash bench/setup.sh
	$(BIN)/python -m bench.run

bench-quick: install
	bash bench/setup.sh
	$(BIN)/python -m bench.run --quick
