"""The figures of README.md: `ls -l` of 5,000 Files on a gemfs mount whose kernel caches have
expired, with gemfs's backport, with the patched mfusepy, and with stock mfusepy alone.

    .venv/bin/python contrib/mfusepy-readdirplus/measure.py [backport|patched|stock ...]

For each, a local `gemfs serve` with 5,000 seeded Files (admin /seed, as bench/run.py's listing
case), a mount with --attr-timeout 0.5 and no --debug: the median of 5 `ls -l`, each after the
kernel's caches expired; then a mount with --debug: the `getattr` calls of one such `ls -l`.
The daemon runs the mfusepy of a directory put first on PYTHONPATH: "patched" is the installed
mfusepy.py with mfusepy.patch applied; "stock" is the installed one whose Operations merely
declares `readdir_plus`, so gemfs skips its backport and mfusepy 3.1.1's own readdir lists,
without attributes: mfusepy alone, as before gemfs had READDIRPLUS.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mfusepy

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import DEFAULT_KEYS, MountProcess, ServerProcess, wait_for  # noqa: E402

COUNT = 5000
ATTR_TIMEOUT = 0.5
RUNS = 5
STOCK_STUB = '''

@_nullable_dummy_function
def _declared_only(self, path: str, offset: int, fh: int):
    return []


Operations.readdir_plus = _declared_only
'''


def mfusepy_dir(config: str, tmp: Path) -> str:
    """The PYTHONPATH entry for `config` ("" for the installed mfusepy)."""
    if config == "backport":
        return ""
    directory = tmp / config
    directory.mkdir()
    shutil.copy(mfusepy.__file__, directory / "mfusepy.py")
    if config == "patched":
        subprocess.run(["git", "apply", "--include=mfusepy.py", str(Path(__file__).with_name(
            "mfusepy.patch"))], cwd=directory, check=True)
    else:
        with open(directory / "mfusepy.py", "a") as f:
            f.write(STOCK_STUB)
    return str(directory)


def ls_l(m: MountProcess) -> tuple[float, int]:
    """One `ls -l` after the kernel's caches expired: seconds, and getattr lines it logged."""
    time.sleep(ATTR_TIMEOUT * 3)
    before = len(m.read_log())
    t0 = time.perf_counter()
    out = subprocess.run(["ls", "-l", str(m.path)], capture_output=True, text=True,
                         check=True).stdout
    secs = time.perf_counter() - t0
    if sum(1 for line in out.splitlines() if line.startswith("-")) != COUNT:
        raise RuntimeError(f"ls -l did not show {COUNT} Files")
    return secs, len(re.findall(r"op getattr\(", m.read_log()[before:]))


def measure(config: str, tmp: Path) -> str:
    os.environ["PYTHONPATH"] = mfusepy_dir(config, tmp)  # the mounts inherit it
    with ServerProcess(tmp / f"server-{config}") as server:
        server.admin.seed(DEFAULT_KEYS[0], COUNT, prefix="f-", size=1024)
        results = {}
        for debug in (False, True):
            extra = ["--attr-timeout", str(ATTR_TIMEOUT)] + (["--debug"] if debug else [])
            m = MountProcess(tmp, server, extra=extra,
                             name=f"{config}-{'debug' if debug else 'plain'}").start()
            try:
                wait_for(lambda m=m: len(os.listdir(m.path)) == COUNT, timeout=120,
                         what="the listing")
                m.sh("ls -l >/dev/null")
                results[debug] = [ls_l(m) for _ in range(1 if debug else RUNS)]
            finally:
                m.stop()
    times = [secs for secs, _ in results[False]]
    return (f"{config}: ls -l of {COUNT}, median {statistics.median(times):.3f} s of {RUNS} "
            f"({' '.join(f'{t:.3f}' for t in times)}); getattr calls (--debug): "
            f"{results[True][0][1]}")


def main() -> None:
    configs = sys.argv[1:] or ["backport", "patched", "stock"]
    with tempfile.TemporaryDirectory(prefix="gemfs-readdirplus-") as tmp:
        for config in configs:
            print(measure(config, Path(tmp)), flush=True)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
