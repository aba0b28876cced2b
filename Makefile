# gemfs: every target installs what it needs first, so a fresh Debian machine (as root) only
# needs `make test` or `make mount`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
GEMFS   := $(VENV)/bin/gemfs
MNT     ?= $(HOME)/gemini
PYTEST_ARGS ?=

.PHONY: setup system-deps mount unmount serve test test-long bench clean

setup: system-deps $(VENV)/.installed

# FUSE 3 (fusermount3, libfuse3.so.3) and rsync, which the tests drive, from Debian's packages.
system-deps:
	@if ! command -v fusermount3 >/dev/null 2>&1 || ! command -v rsync >/dev/null 2>&1 \
	    || ! ldconfig -p | grep -q libfuse3.so.3; then \
	  echo "installing fuse3 and rsync"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq fuse3 rsync; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# Mount the embedded local Files API server at $(MNT) (data under ~/.local/share/gemfs);
# `make mount MNT=/some/empty/dir` mounts elsewhere.
mount: setup
	mkdir -p $(MNT)
	$(GEMFS) mount --local $(MNT)

unmount: setup
	$(GEMFS) unmount $(MNT)

serve: setup
	$(GEMFS) serve

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-long: setup
	$(PY) -m pytest -m long $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
