"""The command line against real mounts: what users see on stderr while mounting, df and
`gemfs status` figures, `gemfs wait`, systemd's readiness notice, and /etc/fstab through
util-linux's own `mount`."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gemfs import registry
from tests import launcher
from tests.helpers import REPO_ROOT
from tests.mount.conftest import Mount, gemfs_cmd, in_mount_table, isolated_env, wait_for


def run_gemfs(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`gemfs ARGS` with `env` (an `isolated_env`), forked from the warm interpreter as the
    tests' other commands are (tests/launcher.py): an exec's start costs ~1.5 s of CPU, and what
    these tests read is the CLI's output, the same either way. The foreground mount and the
    terminal `gemfs wait` below stay real processes."""
    return launcher.run(list(args), env=env, timeout=timeout,
                        scratch=Path(env["XDG_STATE_HOME"]).parent / "cli")


def test_foreground_mount_notifies_systemd_and_says_no_libfuse_warning(tmp_path):
    m = Mount(tmp_path, None, local=True)
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)
    env = {**m.env, "NOTIFY_SOCKET": str(notify)}
    args = [a for a in m.args if a != "--log-file" and a != str(m.log)]  # the log on stderr
    proc = subprocess.Popen(gemfs_cmd("mount", "-f", str(m.path), *args), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        ready = sock.recv(1000).decode()
        assert ready.splitlines()[:2] == ["READY=1", f"MAINPID={proc.pid}"]
        assert in_mount_table(m.path)  # READY=1 only once the mount is live
        (m.path / "x.txt").write_text("x")
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(1000) == b"STOPPING=1"
        _, err = proc.communicate(timeout=60)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if in_mount_table(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)])
    assert proc.returncode == 0, err
    assert f"gemfs: mounted at {m.path}" in err
    assert "Ignoring invalid max threads" not in err, err
    assert not in_mount_table(m.path)


def test_df_and_status_agree_and_are_fresh(mount):
    for name in ("a.txt", "b.txt", "c.txt"):
        (mount.path / name).write_bytes(b"12345")
    os.unlink(mount.path / "b.txt")
    # Right after the delete, not a record written up to half a second earlier.
    status = mount.status()
    assert "files:     2, 10 B of 20 GiB quota used" in status, status
    df = mount.sh("df --output=itotal,iused,iavail .").stdout.split("\n")[1].split()
    total, used, free = map(int, df)
    assert used == 2 and total == used + free, df
    size = mount.sh("df -h --output=size .").stdout.split("\n")[1].strip()
    assert size == "20G"  # the same unit as gemfs status and --help


def test_status_of_a_non_mount_is_an_error_on_stderr(mount, tmp_path):
    proc = run_gemfs(mount.env, "status", str(tmp_path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"gemfs: {tmp_path} is not a gemfs mount"


def test_wait_until_a_video_is_active(tmp_path, server_factory):
    server = server_factory(keys=["key-a"], args=["--video-processing-seconds", "3"])
    m = Mount(tmp_path, server).start()
    try:
        (m.path / "clip.mp4").write_bytes(b"\0" * 1000)
        (m.path / "other.mp4").write_bytes(b"\0" * 1000)
        meta = json.loads((m.path / "clip.mp4.meta.json").read_text())
        assert meta["state"] == "PROCESSING"
        proc = run_gemfs(m.env, "wait", "--timeout", "0.5", str(m.path / "clip.mp4"))
        assert proc.returncode == 2 and "timed out after 0.5 s" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1  # no progress line off a terminal
        proc = run_gemfs(m.env, "wait", "--timeout", "60", str(m.path / "clip.mp4"),
                         str(m.path / "other.mp4"))
        assert (proc.returncode, proc.stderr) == (0, "")
        for name in ("clip.mp4", "other.mp4"):
            assert json.loads((m.path / f"{name}.meta.json").read_text())["state"] == "ACTIVE"
        # On a terminal: one progress line, rewritten in place, and wiped at the end.
        (m.path / "third.mp4").write_bytes(b"\0" * 1000)
        master, slave = pty.openpty()
        waiter = subprocess.run(gemfs_cmd("wait", str(m.path / "third.mp4")), env=m.env,
                                stdout=subprocess.PIPE, stderr=slave, timeout=120, cwd=REPO_ROOT)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
        os.close(master)
        assert waiter.returncode == 0, shown
        assert shown.startswith(b"\rgemfs: waiting: 0 of 1 ACTIVE; ") and b": PROCESSING (" in shown
        assert shown.endswith(b"\r") and b"\n" not in shown  # nothing left on the terminal
        proc = run_gemfs(m.env, "wait", str(m.path / "missing.mp4"))
        assert proc.returncode == 1 and "missing.mp4: no such file" in proc.stderr
    finally:
        m.stop()


def test_second_local_mount_on_the_same_data_says_why(tmp_path):
    first = Mount(tmp_path, None, local=True, name="one").start()
    try:
        second = Mount(tmp_path, None, local=True, name="two")
        proc = run_gemfs(second.env, "mount", str(second.path), *second.args)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert "is in use by another gemfs server (pid " in lines[0], lines
        holder = int(lines[0].rsplit("(pid ", 1)[1].rstrip(")"))
        cmdline = Path(f"/proc/{holder}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in cmdline  # the pid named is the first mount's server
        assert not in_mount_table(second.path)
    finally:
        first.stop()


def test_unreachable_server_says_it_is_waiting(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    class Nobody:
        url = f"http://127.0.0.1:{port}"

    m = Mount(tmp_path, Nobody())
    proc = run_gemfs(m.env, "mount", str(m.path), *m.args, "--retry-deadline", "2")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1
    assert lines[0] == (f"gemfs: waiting for http://127.0.0.1:{port}: connection refused "
                        "(retrying for 2 s)"), lines
    assert len(lines) == 2 and lines[1].startswith(f"gemfs: cannot reach http://127.0.0.1:{port}")


def test_fstab_line_mounts_with_util_linux_mount_and_umount(tmp_path):
    """mount(8) runs helpers with PATH and HOME removed, so the test names gemfs by its path in
    the classic `PROGRAM#SOURCE ... fuse` form; `fuse.gemfs` goes the same way (mount.fuse3 runs
    `gemfs SOURCE MOUNTPOINT -o OPTIONS`) with gemfs found in /usr/local/bin or /usr/bin."""
    bindir = Path(sys.executable).parent
    if not (bindir / "gemfs").exists() or not (bindir / "mount.gemfs").exists():
        pytest.skip("the gemfs console scripts are not installed in this venv (make setup)")
    mnt = tmp_path / "gemini dir"  # a space: fstab writes it \\040
    mnt.mkdir()
    env = isolated_env(tmp_path)
    state = registry.default_state_dir(env)
    log = tmp_path / "daemon.log"
    options = ",".join([f"data={tmp_path / 'data'}", f"staging_dir={tmp_path / 'staging'}",
                        f"log_file={log}", "list_ttl=1", "cache_size=1G", "_netdev", "noauto",
                        "x-systemd.automount", "nofail"])
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{bindir / 'gemfs'}#local {str(mnt).replace(' ', chr(92) + '040')} fuse "
                     f"{options} 0 0\n")
    proc = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], env=env, capture_output=True,
                          text=True, timeout=120)
    try:
        assert proc.returncode == 0, proc.stderr + (log.read_text() if log.exists() else "")
        assert registry.mount_table_entry(str(mnt)) == ("gemfs", "fuse.gemfs")
        (mnt / "via-fstab.txt").write_text("hello")
        assert json.loads((mnt / "via-fstab.txt.meta.json").read_text())["sizeBytes"] == "5"
        pid = json.loads(Path(registry.record_file(str(mnt), state)).read_text())["pid"]
        umount = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
        assert umount.returncode == 0, umount.stderr
        wait_for(lambda: not registry.pid_alive(pid), timeout=60, what="the daemon to exit")
        assert not in_mount_table(mnt)
        assert not Path(registry.record_file(str(mnt), state)).exists()

        # The same line through the mount.gemfs console script, as mount -t gemfs runs it.
        proc = subprocess.run([str(bindir / "mount.gemfs"), "local", str(mnt), "-o",
                               "rw," + options, "-t", "gemfs"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert (mnt / "via-fstab.txt").exists()  # the same data directory
        proc = run_gemfs(env, "unmount", str(mnt))
        assert proc.returncode == 0 and not in_mount_table(mnt), proc.stderr
    finally:
        if in_mount_table(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
