"""READDIRPLUS stays in use: `ls -l` of a directory the kernel already knows gets every entry's
attributes from the listing itself, not from one getattr per entry.

gemfs/fuse_plus.py reaches into mfusepy's internals to offer READDIRPLUS; a new mfusepy, libfuse
or kernel could silently turn it off, and everything would still work, only slower (a round trip
per file: bench/run.py's listing case). This test makes that visible: it counts the `op getattr`
lines the daemon logs at --debug during one `ls -l`.
"""

from __future__ import annotations

import io
import os
import re
import time

from tests.mount.conftest import Mount, wait_for

COUNT = 50
ATTR_TIMEOUT = 0.5  # short, so that the wait below for the kernel's caches to expire is short
# What `ls -l` of a known directory may still ask besides the listing: the directory itself and
# its parent, whatever the kernel or ls look up once. Without READDIRPLUS it is one per entry.
AT_MOST = 5


def getattr_calls(log_text: str) -> list[str]:
    return re.findall(r"op getattr\((.*)\)$", log_text, flags=re.MULTILINE)


def test_ls_l_of_a_known_directory_needs_no_getattr_per_entry(tmp_path, gemfs_server, sdk):
    m = Mount(tmp_path, gemfs_server,
              extra=("--debug", "--attr-timeout", str(ATTR_TIMEOUT))).start()
    try:
        for i in range(COUNT):
            sdk.files.upload(file=io.BytesIO(b"x" * i),
                             config={"mime_type": "text/plain", "display_name": f"f{i:02}.txt"})
        wait_for(lambda: len(os.listdir(m.path)) == COUNT, timeout=20, what=f"{COUNT} files")
        first = m.sh("ls -l").stdout
        assert len([line for line in first.splitlines() if line.endswith(".txt")]) == COUNT
        # The kernel's entry and attribute caches expire unobservably: wait them out, so that the
        # second `ls -l` must refresh all 50 entries, through the listing or one by one.
        time.sleep(ATTR_TIMEOUT * 3)
        before = len(m.read_log())
        second = m.sh("ls -l").stdout
        log = m.read_log()[before:]
        assert second == first
        assert "op readdir" in log, "the second ls -l did not list the directory at all"
        calls = getattr_calls(log)
        per_entry = [c for c in calls if re.match(r"'/f\d\d\.txt'", c)]
        assert len(calls) <= AT_MOST and per_entry == [], (
            f"{len(calls)} getattr calls ({len(per_entry)} for single entries) in one ls -l of "
            f"{COUNT} files: READDIRPLUS is not in use")
    finally:
        m.stop()
