"""What the mount refuses and reports: read-back, rename, limits, quota, failed uploads, other
clients' Files, expiry, df, request counts, and the lifecycle (status, SIGTERM, --local)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess

import pytest

from tests import launcher
from tests.helpers import ServerProcess
from tests.mount.conftest import KEY, Mount, in_mount_table, wait_for
from tests.mount.test_copy import assert_uploaded, remote_files, shlex


def upload_elsewhere(sdk, name: str, data: bytes) -> None:
    """A File another client uploaded: its bytes are not on this machine."""
    sdk.files.upload(file=io.BytesIO(data), config={"display_name": name, "mime_type": "text/plain"})


def test_cat_of_file_uploaded_elsewhere_is_permission_denied(mount, sdk):
    upload_elsewhere(sdk, "a.txt", b"secret")
    wait_for(lambda: (mount.path / "a.txt").exists(), timeout=10)
    assert oct(os.stat(mount.path / "a.txt").st_mode & 0o777) == "0o200"
    proc = mount.sh("cat a.txt", check=False)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr


def test_own_files_read_back_from_the_cache(mount, tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "a.bin").write_bytes(data)
    mount.sh(f"cp {shlex(tmp_path / 'a.bin')} ./ && cmp {shlex(tmp_path / 'a.bin')} a.bin")
    assert oct(os.stat(mount.path / "a.bin").st_mode & 0o777) == "0o644"
    mount.sh(f"cp a.bin {shlex(tmp_path / 'back.bin')}")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_mv_of_file_uploaded_elsewhere_is_not_permitted(mount, sdk):
    upload_elsewhere(sdk, "a.txt", b"stay")
    wait_for(lambda: (mount.path / "a.txt").exists(), timeout=10)
    proc = mount.sh("mv a.txt b.txt", check=False)
    assert proc.returncode != 0 and "Operation not permitted" in proc.stderr
    assert set(remote_files(sdk)) == {"a.txt"}


def test_mv_of_own_file_uploads_it_under_the_new_name(mount, sdk, admin, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"move me")
    mount.sh(f"cp {shlex(tmp_path / 'a.txt')} ./")
    before = {f.display_name: f.name for f in sdk.files.list()}
    admin.reset_stats()
    mount.sh("mv a.txt b.txt && cat b.txt > /dev/null")
    stats = admin.stats()
    assert stats.get("upload_finalize") == 1 and stats.get("delete") == 1
    assert set(remote_files(sdk)) == {"b.txt"}
    assert (mount.path / "b.txt").read_bytes() == b"move me"
    assert {f.name for f in sdk.files.list()}.isdisjoint({before["a.txt"]})


def test_sidecars_are_read_only_and_hidden(mount, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x")
    mount.sh(f"cp {shlex(tmp_path / 'a.txt')} ./")
    assert os.listdir(mount.path) == ["a.txt"]
    assert mount.sh("rm a.txt.meta.json", check=False).returncode != 0
    proc = mount.sh("echo x > a.txt.meta.json", check=False)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert (mount.path / "a.txt.meta.json").stat().st_size == len((mount.path / "a.txt.meta.json").read_bytes())


def test_ln_and_xattrs_are_refused(mount, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x")
    mount.sh(f"cp {shlex(tmp_path / 'a.txt')} ./")
    assert "Operation not permitted" in mount.sh("ln -s a.txt link", check=False).stderr
    with pytest.raises(OSError) as info:
        os.setxattr(mount.path / "a.txt", "user.x", b"1")
    assert info.value.errno == 95  # ENOTSUP: xattrs are read-only (test_tools.py reads them)


def test_df_shows_the_quota(mount, tmp_path):
    (tmp_path / "a.bin").write_bytes(os.urandom(1_000_000))
    mount.sh(f"cp {shlex(tmp_path / 'a.bin')} ./")
    st = os.statvfs(mount.path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    assert total == 20 * 1024**3
    assert total - free >= 1_000_000
    assert "gemfs" in mount.sh("df -h .").stdout


def test_ls_l_makes_no_per_file_api_call(tmp_path, gemfs_server, sdk, admin):
    # No kernel attribute cache, so every stat of `ls -l` reaches the daemon.
    m = Mount(tmp_path, gemfs_server, extra=("--attr-timeout", "0")).start()
    try:
        for i in range(30):
            sdk.files.upload(file=io.BytesIO(b"x" * i),
                             config={"mime_type": "text/plain", "display_name": f"f{i:02}.txt"})
        wait_for(lambda: len(os.listdir(m.path)) == 30, what="30 files listed")
        admin.reset_stats()
        lines = m.sh("ls -l").stdout.splitlines()
        assert len([line for line in lines if line.endswith(".txt")]) == 30
        stats = admin.stats()
        assert stats["get"] == 0
        assert stats["list"] <= 1  # at most one background refresh (one page for 30 Files)
    finally:
        m.stop()


def test_probes_for_missing_names_make_no_api_call(mount, admin):
    os.listdir(mount.path)
    admin.reset_stats()
    for name in (".Trash-1000", ".hidden", "autorun.inf", ".xdg-volume-info", "desktop.ini"):
        assert not (mount.path / name).exists()
    assert admin.stats()["get"] == 0


def test_other_clients_files_appear_after_the_ttl(mount, sdk):
    os.listdir(mount.path)
    sdk.files.upload(file=io.BytesIO(b"named"), config={"mime_type": "text/plain", "display_name": "from-sdk.txt"})
    sdk.files.upload(file=io.BytesIO(b"dup 1"), config={"mime_type": "text/plain", "display_name": "dup.txt"})
    sdk.files.upload(file=io.BytesIO(b"dup 2"), config={"mime_type": "text/plain", "display_name": "dup.txt"})
    anon = sdk.files.upload(file=io.BytesIO(b"ID3\x03 no name"), config={"mime_type": "audio/mpeg"})
    anon_id = anon.name.split("/")[1]

    def listed():
        names = set(os.listdir(mount.path))
        return names if len(names) == 4 else None

    names = wait_for(listed, timeout=20, what="four files")
    assert "from-sdk.txt" in names and "dup.txt" in names and f"{anon_id}.mp3" in names
    (suffixed,) = [n for n in names if n.startswith("dup~")]
    assert suffixed.endswith(".txt")


def test_generated_files_can_be_read(mount, admin):
    payload = os.urandom(300_000)
    admin.generated(KEY, payload, display_name="renders/out.png", mime_type="image/png")
    wait_for(lambda: (mount.path / "renders" / "out.png").exists(), what="generated file")
    assert (mount.path / "renders" / "out.png").stat().st_size == len(payload)
    assert (mount.path / "renders" / "out.png").read_bytes() == payload
    meta = json.loads((mount.path / "renders" / "out.png.meta.json").read_text())
    assert meta["source"] == "GENERATED" and meta["downloadUri"]


def test_upload_failure_makes_cp_fail_and_lists_nothing(tmp_path, gemfs_server, admin, sdk):
    m = Mount(tmp_path, gemfs_server, extra=("--retry-deadline", "2")).start()
    try:
        (tmp_path / "a.txt").write_bytes(b"doomed")
        admin.set_faults({"op": "upload_start", "action": "error", "status": 500, "times": 1000})
        proc = m.sh(f"cp {shlex(tmp_path / 'a.txt')} ./", check=False)
        assert proc.returncode != 0
        assert "Input/output error" in proc.stderr
        admin.clear_faults()
        assert remote_files(sdk) == {}
        assert not (m.path / "a.txt").exists()
        # And the same file goes up fine once the server recovers.
        m.sh(f"cp {shlex(tmp_path / 'a.txt')} ./")
        assert_uploaded(sdk, "a.txt", b"doomed")
    finally:
        m.stop()


def test_too_large_and_quota_refused_by_the_server(tmp_path, sdk):
    with ServerProcess(tmp_path / "small", keys=[KEY], args=["--max-file-size", "1000", "--project-quota", "3000"]) as server:
        m = Mount(tmp_path, server).start()
        client = server.client(KEY)
        try:
            (tmp_path / "big").write_bytes(b"b" * 1500)
            proc = m.sh(f"cp {shlex(tmp_path / 'big')} ./big", check=False)
            assert proc.returncode != 0 and "File too large" in proc.stderr
            for i in range(3):
                (tmp_path / f"f{i}").write_bytes(b"q" * 900)
                m.sh(f"cp {shlex(tmp_path / f'f{i}')} ./f{i}")
            (tmp_path / "over").write_bytes(b"o" * 900)
            proc = m.sh(f"cp {shlex(tmp_path / 'over')} ./over", check=False)
            assert proc.returncode != 0 and "Disk quota exceeded" in proc.stderr
            assert set(f.display_name for f in client.files.list()) == {"f0", "f1", "f2"}
        finally:
            m.stop()


def test_a_file_replaced_elsewhere_shows_its_new_size_while_the_kernel_keeps_it(mount, sdk, tmp_path):
    # The reason the kernel's writeback cache stays off (README, staging note): with it, the
    # kernel trusts its own size of a regular file for as long as it keeps the inode, and a
    # reader of a File that another client replaced would get the old length.
    (tmp_path / "v1").write_bytes(b"1" * 1000)
    mount.sh(f"cp {tmp_path / 'v1'} f.bin")
    assert os.stat(mount.path / "f.bin").st_size == 1000
    fd = os.open(mount.path / "f.bin", os.O_RDONLY)  # the kernel keeps the inode while it is open
    try:
        (old,) = [f for f in sdk.files.list() if f.display_name == "f.bin"]
        upload_elsewhere(sdk, "f.bin", b"2" * 5000)
        sdk.files.delete(name=old.name)
        wait_for(lambda: os.stat(mount.path / "f.bin").st_size == 5000, timeout=20,
                 what="the new size of f.bin")
    finally:
        os.close(fd)


def test_limits_refused_at_write_time_by_the_mount(tmp_path, gemfs_server, admin, sdk):
    m = Mount(tmp_path, gemfs_server, extra=("--max-file-size", "100000", "--quota", "150000")).start()
    try:
        admin.reset_stats()
        proc = m.sh("head -c 200000 /dev/zero > big.bin", check=False)
        assert proc.returncode != 0 and "File too large" in proc.stderr
        proc = m.sh("head -c 90000 /dev/zero > a.bin && head -c 90000 /dev/zero > b.bin", check=False)
        assert proc.returncode != 0 and "Disk quota exceeded" in proc.stderr
        assert admin.stats()["upload_start"] == 1  # only a.bin went up: nothing partial
        assert set(remote_files(sdk)) == {"a.bin"}
        assert (sdk.files.list().page[0].size_bytes or 0) == 90000
    finally:
        m.stop()


def test_expired_files_vanish(tmp_path, sdk):
    with ServerProcess(tmp_path / "ttl", keys=[KEY], args=["--file-ttl", "3"]) as server:
        m = Mount(tmp_path, server).start()
        try:
            (tmp_path / "a.txt").write_bytes(b"short-lived")
            m.sh(f"cp {shlex(tmp_path / 'a.txt')} ./")
            assert (m.path / "a.txt").exists()
            wait_for(lambda: not (m.path / "a.txt").exists(), timeout=10, what="expiry")
        finally:
            m.stop()


def test_status_shows_the_mount(mount, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x")
    mount.sh(f"cp {shlex(tmp_path / 'a.txt')} ./")
    out = wait_for(lambda: (lambda s: s if "1," in s else None)(mount.status()), what="status")
    assert str(mount.path) in out and "backend:" in out and "quota used" in out


def test_sigterm_with_upload_in_flight(tmp_path, gemfs_server, admin, sdk):
    m = Mount(tmp_path, gemfs_server)
    admin.set_faults({"op": "upload_finalize", "action": "stall", "seconds": 2, "times": 1})
    # Forked from the warm interpreter like the other mounts (tests/launcher.py); the wait is
    # only a hang guard, as long as MountProcess gives `gemfs mount`.
    daemon = launcher.spawn(["mount", "-f", str(m.path), *m.args], env=m.env,
                            stdout=tmp_path / "daemon.out", stderr=tmp_path / "daemon.err")
    try:
        wait_for(lambda: in_mount_table(m.path), timeout=m.mount_timeout, what="mount")
        (tmp_path / "late.bin").write_bytes(b"z" * 100_000)
        cp = subprocess.Popen(["cp", str(tmp_path / "late.bin"), str(m.path / "late.bin")])
        wait_for(lambda: admin.stats()["upload_start"] >= 1, what="upload to start")
        daemon.send_signal(signal.SIGTERM)
        assert cp.wait(timeout=60) == 0
        assert daemon.wait(timeout=60) == 0
        assert not in_mount_table(m.path)
        assert_uploaded(sdk, "late.bin", b"z" * 100_000)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        if in_mount_table(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)])


def test_mount_refuses_bad_key_missing_and_busy_mountpoints(tmp_path, gemfs_server):
    bad = Mount(tmp_path, gemfs_server, key="not-a-key", name="bad")
    proc = bad.gemfs("mount", str(bad.path), *bad.args, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == "gemfs: API key not valid"
    assert not in_mount_table(bad.path)
    proc = bad.gemfs("mount", str(tmp_path / "nope"), *bad.args, timeout=60)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    (bad.path / "something").write_text("x")
    proc = bad.gemfs("mount", str(bad.path), *bad.args, timeout=60)
    assert proc.returncode == 1 and "not an empty directory" in proc.stderr
    # An unreachable server: retried for the (shortened) deadline, then one line saying so.
    gone = Mount(tmp_path, gemfs_server, name="gone", extra=("--retry-deadline", "2"))
    gone.args[gone.args.index("--base-url") + 1] = "http://127.0.0.1:9/"
    proc = gone.gemfs("mount", str(gone.path), *gone.args, timeout=60)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr
    assert not in_mount_table(gone.path)


def test_local_mode_mounts_the_embedded_server(tmp_path):
    m = Mount(tmp_path, None, local=True).start()
    try:
        (tmp_path / "a.txt").write_bytes(b"local")
        m.sh(f"cp {shlex(tmp_path / 'a.txt')} ./")
        meta = json.loads((m.path / "a.txt.meta.json").read_text())
        assert meta["displayName"] == "a.txt" and meta["sizeBytes"] == "5"
        assert "backend:   local" in m.status()
    finally:
        m.stop()
    # The data stays: a second mount of the same --data sees the File.
    m2 = Mount(tmp_path, None, local=True, name="again").start()
    try:
        assert os.listdir(m2.path) == ["a.txt"]
    finally:
        m2.stop()


def test_debug_logs_every_operation_and_api_call_but_never_the_key(tmp_path, gemfs_server):
    m = Mount(tmp_path, gemfs_server, extra=("--debug",)).start()
    try:
        (tmp_path / "a.txt").write_bytes(b"debug me")
        m.sh(f"cp {shlex(tmp_path / 'a.txt')} ./ && ls -l && rm a.txt")
    finally:
        m.stop()
    log = m.read_log()
    for needle in ("op create('/a.txt'", "op write_buf('/a.txt', <8 bytes>", "op flush(", "op unlink('/a.txt')",
                   "api upload", "api delete", "api list"):
        assert needle in log, needle
    assert KEY not in log


def test_mount_keeps_answering_while_an_upload_is_in_flight(mount, admin, tmp_path):
    """An open of the very file being uploaded waits for it, without holding up anything else."""
    admin.set_faults({"op": "upload_finalize", "action": "stall", "seconds": 3, "times": 1})
    (tmp_path / "slow.bin").write_bytes(b"s" * 50_000)
    cp = subprocess.Popen(["cp", str(tmp_path / "slow.bin"), str(mount.path / "slow.bin")])
    try:
        wait_for(lambda: admin.stats()["upload_start"] >= 1, what="upload to start")
        reader = subprocess.Popen(["bash", "-c", f"exec 3<{shlex(mount.path / 'slow.bin')}"])
        listing = mount.sh("ls -l && stat . && df .", timeout=10)
        assert "slow.bin" in listing.stdout
        # Answered while the upload still stalls: cp (waiting in close for the finalize) and the
        # reader (waiting in open for the upload) are both still blocked.
        assert cp.poll() is None and reader.poll() is None
        assert cp.wait(timeout=30) == 0
        reader.wait(timeout=30)
    finally:
        if cp.poll() is None:
            cp.kill()
