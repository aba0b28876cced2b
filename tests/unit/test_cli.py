"""The command line without mounting: one-line errors and their exit codes, option checks, sizes,
the fstab helper's translation, `gemfs wait`'s loop, sd_notify, and the registry's helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gemfs import registry
from gemfs.cli import UsageError, build_parser, check_base_url, main
from gemfs.fstab import HelperError, parse_argv, translate
from gemfs.mount import DEFAULTS, sd_notify
from gemfs.units import format_size, parse_size
from gemfs.wait import wait_all
from tests.helpers import REPO_ROOT

GiB = 1024**3


def gemfs(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemfs", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, env=env)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # one line, never a traceback
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--api-key", "KEY"], ["--api-key is not taken", "--api-key-file"]),  # not an abbreviation
    (["--api-key-f", "x"], ["unrecognized arguments"]),  # abbreviations are off
    (["--api-key-file", "/nonexistent/key"], ["/nonexistent/key", "No such file"]),
    (["--api-key-file", "/"], ["is a directory"]),
    (["--base-url", "127.0.0.1:8765"], ["needs http:// or https://"]),
    (["--base-url", "http://127.0.0.1:8765/v1beta"], ["write --base-url http://127.0.0.1:8765/"]),
    (["--base-url", "https://example.com/api/v1/"], ["write --base-url https://example.com/api/"]),
    (["--data", "/tmp/d"], ["--data is for --local"]),
    (["--local", "--base-url", "http://127.0.0.1:1"], ["--local starts its own server"]),
    (["--quota", "20GB"], ["not a byte size", "binary"]),
    (["--list-ttl", "-1"], [">= 0"]),
    (["--request-timeout", "0"], ["more than 0"]),
])
def test_mount_usage_errors_are_one_line_exit_2(tmp_path, args, needles):
    one_line_error(gemfs("mount", *args, str(tmp_path)), 2, *needles)


def test_key_file_errors(tmp_path):
    unreadable = tmp_path / "k"
    unreadable.write_text("")
    one_line_error(gemfs("mount", "--api-key-file", str(unreadable), str(tmp_path)), 2, "holds no API key")
    unreadable.write_text("\xff", encoding="latin-1")
    one_line_error(gemfs("mount", "--api-key-file", str(unreadable), str(tmp_path)), 2, "not a text file")


def test_runtime_errors_are_one_line_exit_1(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "s")}
    one_line_error(gemfs("mount", str(tmp_path / "missing"), env=env), 1, "does not exist")
    one_line_error(gemfs("status", str(tmp_path), env=env), 1, "is not a gemfs mount")
    one_line_error(gemfs("wait", str(tmp_path), env=env), 1, "not on a gemfs mount")


def test_version():
    proc = gemfs("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "gemfs 0.1.0"


def test_status_into_a_closed_pipe_is_quiet(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "s")}
    # `gemfs status | true`: the reader is gone before gemfs writes.
    proc = subprocess.run(f"{sys.executable} -m gemfs status | true; echo ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=60)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() in ("0", "141")


def test_base_url_check_keeps_good_urls():
    for url in ("http://127.0.0.1:8765", "https://generativelanguage.googleapis.com/",
                "http://[::1]:80/proxy/"):
        assert check_base_url(url) == url
    with pytest.raises(UsageError, match="not a valid port"):
        check_base_url("http://host:99999/")


def test_mount_defaults_come_from_mount_options():
    args = build_parser().parse_args(["mount", "/mnt"])
    for field in ("list_ttl", "quota", "max_file_size", "cache_size", "retry_deadline",
                  "request_timeout", "attr_timeout"):
        assert getattr(args, field) == getattr(DEFAULTS, field), field
    assert DEFAULTS.quota == 20 * GiB and DEFAULTS.cache_size == 10 * GiB
    sized = build_parser().parse_args(["mount", "/mnt", "--quota", "1T", "--cache-size", "0",
                                       "--max-file-size", "512M"])
    assert (sized.quota, sized.cache_size, sized.max_file_size) == (1024 * GiB, 0, 512 * 1024**2)


def test_sizes_are_binary_both_ways():
    assert parse_size("10G") == parse_size("10GiB") == 10 * GiB
    assert parse_size("512k") == 512 * 1024 and parse_size("1.5T") == 1536 * GiB
    assert parse_size("123") == 123 and parse_size("0") == 0
    for bad in ("10GB", "ten", "1.3", "-5", "5X"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(20 * GiB) == "20 GiB"  # what df -h says as 20G; never "21.5 GB"
    assert format_size(1536) == "1.5 KiB" and format_size(3) == "3 B"


def test_fstab_options_become_mount_flags():
    source, mnt, opts, sloppy, fake = parse_argv(
        ["local", "/mnt/g", "-o", "rw,_netdev,nofail,x-systemd.automount,dev,suid,list_ttl=5,"
         "cache_size=1G,allow_other,ro,data=/srv/d", "-t", "fuse.gemfs", "-n"])
    assert (source, mnt, sloppy, fake) == ("local", "/mnt/g", False, False)
    assert translate(source, mnt, opts) == [
        "mount", "/mnt/g", "--local", "--list-ttl", "5", "--cache-size", "1G", "--allow-other",
        "--read-only", "--data", "/srv/d"]
    assert translate("http://127.0.0.1:1/", "/m", ["api_key_file=/k"]) == [
        "mount", "/m", "--base-url", "http://127.0.0.1:1/", "--api-key-file", "/k"]
    assert translate("gemini", "/m", []) == ["mount", "/m"]
    assert translate("gemini", "/m", ["bogus"], sloppy=True) == ["mount", "/m"]
    for source, opts, needle in [("nfs", [], "unknown source"),
                                 ("gemini", ["bogus=1"], "unknown option"),
                                 ("gemini", ["api_key=k"], "api_key_file"),
                                 ("gemini", ["list_ttl"], "needs a value"),
                                 ("gemini", ["allow_other=1"], "takes no value"),
                                 ("gemini", ["base_url=http://x/"], "source field")]:
        with pytest.raises(HelperError, match=needle):
            translate(source, "/m", opts)


def test_fstab_helper_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gemfs.fstab", "gemini", str(tmp_path), "-o", "nope"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    one_line_error(proc, 2, "mount.gemfs: unknown option 'nope'")
    # mount.fuse3 runs `gemfs SOURCE MOUNTPOINT -o ...`: the same helper behind `gemfs`.
    one_line_error(gemfs("gemini", str(tmp_path), "-o", "nope"), 2, "gemfs: unknown option")
    assert main(["gemini", str(tmp_path), "-f", "-o", "list_ttl=3"]) == 0  # mount -f: fake


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_backs_off_until_active():
    clock = FakeClock()
    answers = {"a": ["PROCESSING"] * 5 + ["ACTIVE"], "b": [None, "ACTIVE"]}
    seen: list[str] = []

    def state_of(path):
        queue = answers[path]
        return (queue.pop(0) if len(queue) > 1 else queue[0]), ""

    code, line = wait_all(["a", "b"], timeout=600, state_of=state_of, clock=lambda: clock.now,
                          sleep=clock.sleep, progress=seen.append)
    assert (code, line) == (0, "")
    assert clock.sleeps == [0.2, 0.4, 0.8, 1.6, 3.2]  # doubling from 0.2 s
    assert seen[0].startswith("0 of 2 ACTIVE; a: PROCESSING")


def test_wait_failed_and_timeout():
    clock = FakeClock()
    code, line = wait_all(["v.mp4"], timeout=600, clock=lambda: clock.now, sleep=clock.sleep,
                          state_of=lambda p: ("FAILED", "Video could not be processed."))
    assert code == 1 and line == "v.mp4: FAILED: Video could not be processed."
    code, line = wait_all(["v.mp4"], timeout=30, clock=lambda: clock.now, sleep=clock.sleep,
                          state_of=lambda p: ("PROCESSING", ""))
    assert code == 2 and "timed out after 30 s" in line and "v.mp4 (PROCESSING)" in line
    assert max(clock.sleeps) == 5.0  # the backoff stops growing at 5 s


def test_sd_notify_sends_ready_over_the_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")  # not under systemd: nothing to do


def test_mount_table_unescapes_paths():
    assert registry.unescape_mount_field(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert registry.in_mount_table("/proc")
    assert not registry.in_mount_table("/proc/nothing-mounted-here")


def test_record_key_is_one_function(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path)}
    path = registry.record_file("/mnt/x", registry.default_state_dir(env))
    assert path == str(tmp_path / "state" / "gemfs" / "mounts" / (registry.record_key("/mnt/x") + ".json"))
    assert len(registry.record_key("/mnt/x")) == 16


def test_status_socket_answers_live_status_to_its_user_only(tmp_path):
    from gemfs.mount import StatusSocket, live_status
    from gemfs.status import fresh

    now = {"files": 1}
    control = StatusSocket(lambda: dict(now))
    control.start()
    try:
        assert live_status(control.name) == {"files": 1}
        now["files"] = 0  # an rm: the next answer says so, whatever the record says
        stale = {"pid": os.getpid(), "control": control.name, "status": {"files": 1}}
        assert fresh(stale)["status"] == {"files": 0}
        # Another user gets nothing (the abstract namespace has no file permissions).
        if os.getuid() == 0:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child, as nobody
                try:
                    os.setuid(65534)
                    os.write(write_fd, repr(live_status(control.name)).encode())
                finally:
                    os._exit(0)
            os.close(write_fd)
            answer = os.read(read_fd, 1000).decode()
            os.close(read_fd)
            os.waitpid(pid, 0)
            assert answer == "None"
    finally:
        control.close()
    assert live_status(control.name) is None  # closed: gemfs status falls back to the record
    assert fresh(stale) == stale


def test_a_systemd_automount_point_is_mounted_over_not_refused(tmp_path, monkeypatch):
    from gemfs import mount

    point = tmp_path / "auto"
    point.mkdir()
    (point / "not-empty").write_text("x")  # would be refused, were it not autofs
    with pytest.raises(mount.MountError, match="not an empty directory"):
        mount.check_mountpoint(str(point))
    monkeypatch.setattr(registry, "mount_table_entry",
                        lambda p: ("systemd-1", "autofs") if p == str(point) else None)
    monkeypatch.setattr(os, "listdir", lambda p: pytest.fail("listed the automount point"))
    assert mount.check_mountpoint(str(point)) == str(point)
