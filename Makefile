# gemfs: every target installs what it needs first, so a fresh Debian machine (as root) only
# needs `make test` or `make mount`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
GEMFS   := $(VENV)/bin/gemfs
MNT     ?= $(HOME)/gemini
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: many tests wait on a mount, a server or the kernel, so
# more workers than the CI machine's 2 cores keep both busy; each costs its collection and its
# forkserver (~5 s of CPU). Idle, back to back, with the forkserver preloading uvicorn and httpcore: 5 workers 115.4 s, 6 115.8 s,
# 7 103.8 s, 8 106.6 s.
TEST_WORKERS ?= 7
# At most this many consecutive tests handed to a worker at once: xdist's default hands out up to
# an eighth of what is left in one go, and a worker that drew a run of slow fault tests late
# finished ~45 s after the others (xdist then gives a worker busy with slow tests no more).
TEST_CHUNK ?= 8

.PHONY: setup system-deps gui-deps mount unmount serve test test-long test-gui bench clean

setup: system-deps $(VENV)/.installed

# FUSE 3 (fusermount3, libfuse3.so.3) and the tools the mount tests drive (rsync; gio from
# libglib2.0-bin; getfattr/setfattr from attr; unzip, zip), from Debian's packages.
SYSTEM_TOOLS := fusermount3 rsync gio getfattr unzip zip
system-deps:
	@missing=; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ] || ! ldconfig -p | grep -q libfuse3.so.3; then \
	  echo "installing fuse3, rsync, libglib2.0-bin, attr, unzip, zip (missing:$$missing)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    fuse3 rsync libglib2.0-bin attr unzip zip; \
	fi

# Only for `make test-gui`: a virtual X server, a GTK file manager, input and screenshots.
GUI_TOOLS := Xvfb pcmanfm xdotool import dbus-run-session
gui-deps: system-deps
	@missing=; for t in $(GUI_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing xvfb, pcmanfm, xdotool, imagemagick, dbus (missing:$$missing)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    xvfb pcmanfm xdotool imagemagick dbus; \
	fi

# constraints.txt: the exact versions tested (`pip freeze --exclude-editable` of this venv), so
# every machine and CI installs what was tested; pyproject.toml keeps the ranges.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
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

# Where the tests' temporary files go (TMPDIR: pytest's tmp_path, the mounts' staging and state,
# the servers' data): a tmpfs when there is one. gemfs fsyncs what it stages and its SQLite
# state commits with synchronous=FULL, and on a slow disk those fsyncs were much of the suite's
# wall time (tests/server/test_store.py: 5.1 s on disk, 1.4 s on tmpfs); the code paths are the
# same. `make test TEST_TMPDIR=/tmp` runs them on disk.
TEST_TMPDIR ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo $${TMPDIR:-/tmp})

# --durations=10: the ten slowest tests, so a test that grows slow is seen in every run.
# Without PYTHONDONTWRITEBYTECODE (some shells and CI images set it): with it, pytest rewrites
# the asserts of every test module again in every worker (~5 s of CPU each), and each exec'd
# gemfs compiles its modules again; the caches go to __pycache__, which git ignores.
# pytest rewrites the asserts of the test modules and caches the result beside them, and
# hypothesis caches the constants it reads out of every local module (.hypothesis/): in a fresh
# clone every xdist worker did all of it at once, ~5 s of CPU each (7 workers: 124-128 s of
# tests against 104-106 s run again). One collection, and one hypothesis example
# (GEMFS_TEST_WARMUP, tests/conftest.py), first writes the caches. (The plugins' own modules are
# not rewritten: pyproject.toml's addopts.)
# It only saves time: if it fails (a test module that does not import), the run below says why.
$(VENV)/.pytest-warm: $(VENV)/.installed
	@echo "warming the test caches (one collection)"
	@if env -u PYTHONDONTWRITEBYTECODE GEMFS_TEST_WARMUP=1 $(PY) -m pytest --collect-only -q \
	  -p no:cacheprovider >/dev/null 2>&1; then touch $@; \
	else echo "the warm-up collection failed; the test run below shows why"; fi

test: setup $(VENV)/.pytest-warm
	env -u PYTHONDONTWRITEBYTECODE TMPDIR=$(TEST_TMPDIR) \
	  $(PY) -m pytest -n $(TEST_WORKERS) --maxschedchunk=$(TEST_CHUNK) --durations=10 \
	  $(PYTEST_ARGS)

test-long: setup
	$(PY) -m pytest -m long $(PYTEST_ARGS)

# A file manager (pcmanfm under Xvfb) on a --local mount: paste, paste over, Delete, open.
# Screenshots go to a temp dir it prints. Not part of `make test`.
test-gui: setup gui-deps
	GEMFS_TEST_GUI=1 $(PY) -m pytest tests/gui -v -s $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
