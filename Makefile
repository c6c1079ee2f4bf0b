# Set-up and everyday commands. Every target sets up what it needs first, so on a fresh
# machine `make demo` or `make test` is the only step. Re-running is fast: apt is skipped
# when its packages are present and pip only runs when pyproject.toml or constraints.txt change.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := ffmpeg fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small \
	opl3-soundfont singularity-music asc-music chromium chromium-driver
PY_DIRS := $(wildcard raytag jobs tests bench tools)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup musicnn-wheel system-packages test test-fast lint format demo lock clean

setup: system-packages $(VENV)/.installed musicnn-wheel

# The pretrained musicnn taggers' wheel (weights only; docs/musicnn.md), cached for
# `raytag import musicnn` and the parity tests.
musicnn-wheel: $(VENV)/.installed
	@$(BIN)/raytag import musicnn --download-only >/dev/null

# ffmpeg: decoding (torchcodec loads its libraries); fluidsynth + soundfonts: the labelled
# demo catalogue; singularity-music, asc-music: real, openly licensed music for tests and demo.
# chromium, chromium-driver: the headless browser the tests open HTML pages in (tests/browser.py).
system-packages:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
		echo "installing system packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); }

$(VENV)/.installed: pyproject.toml constraints.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

lint: setup
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

format: setup
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

test: lint
	$(BIN)/pytest -q

# The inner loop: unit tests of pure logic, no Ray, MLflow or S3 server (about a minute).
# `make test` runs these and the integration tests.
test-fast: setup
	$(BIN)/pytest -q -m "not integration"

# The whole product on this machine (docs/operations.md): local MLflow and Ray, a labelled
# catalogue, training, the registry, tagging of real music, a report. A second run reuses
# what exists. Options: make demo DEMO_ARGS="--keep-mlflow" (all: raytag demo --help).
DEMO_ARGS ?=
demo: setup
	$(BIN)/raytag demo $(DEMO_ARGS)

# Refresh the pinned set after changing dependencies.
lock: setup
	$(BIN)/pip freeze --exclude-editable | grep -v '^raytag' > constraints.lock.tmp
	@{ sed -n '/^#/p' constraints.txt; cat constraints.lock.tmp; } > constraints.txt && rm constraints.lock.tmp

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
