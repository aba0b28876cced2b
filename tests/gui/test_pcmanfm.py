"""A file manager on a gemfs mount: pcmanfm under Xvfb, driven with xdotool as a person would
(Ctrl+C / Ctrl+V, the replace dialog, the Delete key and its dialogs, Enter to open), with a
screenshot of every step in a temp dir printed at the start. Outcomes are checked on the server
(the Files and the admin request counts), never on the screen.

The mount talks to a `gemfs serve --admin` subprocess rather than `--local`'s embedded server,
so the test can read the server's request counts; the mount code is the same.

Run with `make test-gui` (GEMFS_TEST_GUI=1; conftest.py skips it otherwise).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, wait_for
from tests.mount.conftest import KEY, Mount
from tests.mount.test_copy import remote_files, sha_field

WAIT = 60  # seconds a step may take on a loaded machine before the test gives up on it

OPEN_PROBE = """[Desktop Entry]
Type=Application
Name=gemfs open probe
Exec=sh -c 'cat "$1" > {out}.bytes 2> {out}.err; echo $? > {out}.rc' sh %f
MimeType=text/plain;
NoDisplay=true
"""


class Desktop:
    """Xvfb, a server and a mount, and one pcmanfm window; every step leaves a screenshot."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shots = root / "shots"
        self.shots.mkdir()
        self.src = root / "src"
        self.src.mkdir()
        self.shot_count = 0
        self.procs: list[subprocess.Popen] = []
        self.server = ServerProcess(root / "server-data", keys=[KEY])
        self.mount: Mount | None = None
        self.admin = self.server.admin

    def start(self) -> None:
        self.server.start()
        self.mount = Mount(self.root, self.server)  # after start: it takes the server's URL
        self.mount.start()
        self.sdk = self.server.client(KEY)
        self.env = self._x_env()
        with open(self.root / "pcmanfm.log", "wb") as log:
            self.procs.append(subprocess.Popen(
                ["dbus-run-session", "--", "pcmanfm", str(self.src)], env=self.env,
                stdout=log, stderr=log, start_new_session=True))
        try:
            self.main = self.window(self.src.name)
        except AssertionError as e:
            raise AssertionError(f"{e}\npcmanfm.log:\n{(self.root / 'pcmanfm.log').read_text()}")

    def _x_env(self) -> dict:
        read, write = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24",
                                 "-nolisten", "tcp"], pass_fds=(write,), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(xvfb)
        os.close(write)
        with os.fdopen(read) as f:
            display = f.readline().strip()
        assert display, "Xvfb did not start"
        home = self.root / "home"
        env = {**self.mount.env, "DISPLAY": f":{display}", "HOME": str(home), "NO_AT_BRIDGE": "1",
               "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache")}
        # "Open" runs a probe that copies the file's bytes out, as a viewer would read them.
        apps = home / ".local/share/applications"
        apps.mkdir(parents=True)
        (home / ".config").mkdir()
        (apps / "gemfs-open-probe.desktop").write_text(OPEN_PROBE.format(out=self.root / "opened"))
        (home / ".config" / "mimeapps.list").write_text(
            "[Default Applications]\ntext/plain=gemfs-open-probe.desktop\n")
        return env

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if self.mount is not None:
            self.mount.stop()
        self.server.stop()

    # -- X ---------------------------------------------------------------------------------------

    def xdotool(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True,
                              timeout=30).stdout

    def windows(self, title: str) -> list[str]:
        return self.xdotool("search", "--onlyvisible", "--name", f"^{title}$").split()

    def window(self, title: str, *, other_than: tuple[str, ...] = ()) -> str:
        found = wait_for(lambda: [w for w in self.windows(title) if w not in other_than],
                         timeout=WAIT, what=f"a window {title!r}")
        return found[0]

    def keys(self, window: str, *keys: str) -> None:
        self.xdotool("windowfocus", "--sync", window)
        self.xdotool("key", "--clearmodifiers", *keys)

    def click_view(self) -> None:
        """Focus the folder view of the main window (an empty spot in it)."""
        self.xdotool("windowfocus", "--sync", self.main)
        self.xdotool("mousemove", "--window", self.main, "400", "300", "click", "1")

    def go_to(self, folder: Path) -> None:
        self.keys(self.main, "ctrl+l")
        self.xdotool("type", "--delay", "5", str(folder))
        self.xdotool("key", "Return")
        self.main = self.window(folder.name)
        self.click_view()
        self.keys(self.main, "F5")  # reload: what the mount lists now

    def copy_all_from_src_and_paste_into_mount(self) -> None:
        self.go_to(self.src)
        self.keys(self.main, "ctrl+a", "ctrl+c")
        self.go_to(self.mount.path)
        self.keys(self.main, "ctrl+v")

    def screenshot(self, what: str) -> Path:
        self.shot_count += 1
        path = self.shots / f"{self.shot_count:02d}-{what}.png"
        subprocess.run(["import", "-window", "root", str(path)], env=self.env, check=True,
                       timeout=30)
        return path

    # -- the server ------------------------------------------------------------------------------

    def remote(self, name: str) -> list:
        return remote_files(self.sdk).get(name, [])

    def remote_is(self, name: str, data: bytes) -> bool:
        files = self.remote(name)
        return len(files) == 1 and files[0].sha256_hash == sha_field(data)


@pytest.fixture(scope="module")
def desktop():
    root = Path(tempfile.mkdtemp(prefix="gemfs-gui-"))
    print(f"\nscreenshots: {root / 'shots'}")
    d = Desktop(root)
    try:
        d.start()
        yield d
    finally:
        d.close()


def test_paste_into_the_mount(desktop):
    (desktop.src / "paste.txt").write_bytes(b"pasted from a file manager\n")
    desktop.admin.reset_stats()
    desktop.copy_all_from_src_and_paste_into_mount()
    wait_for(lambda: desktop.remote_is("paste.txt", b"pasted from a file manager\n"),
             timeout=WAIT, what="paste.txt on the server")
    desktop.screenshot("pasted")
    assert desktop.admin.stats()["upload_start"] == 1
    assert sorted(remote_files(desktop.sdk)) == ["paste.txt"]


def test_paste_over_an_existing_file(desktop):
    if not desktop.remote("paste.txt"):
        desktop.mount.sh(f"cp {desktop.src / 'paste.txt'} paste.txt")
    new = b"the second version, pasted over the first\n"
    (desktop.src / "paste.txt").write_bytes(new)
    desktop.copy_all_from_src_and_paste_into_mount()
    dialog = desktop.window("Confirm File Replacing")
    desktop.screenshot("replace-dialog")
    desktop.keys(dialog, "alt+o")  # Overwrite
    wait_for(lambda: desktop.remote_is("paste.txt", new) or desktop.windows("Finished"),
             timeout=WAIT, what="the new paste.txt on the server, or an error dialog")
    desktop.screenshot("after-overwrite")
    for window in desktop.windows("Finished"):  # "completed with errors": close it
        desktop.keys(window, "alt+c")
    assert desktop.remote_is("paste.txt", new)


def test_delete_key_offers_to_delete_permanently(desktop):
    if not desktop.remote("paste.txt"):
        desktop.mount.sh(f"cp {desktop.src / 'paste.txt'} paste.txt")
    desktop.go_to(desktop.mount.path)
    desktop.admin.reset_stats()
    desktop.keys(desktop.main, "ctrl+a", "Delete")
    to_trash = desktop.window("Confirm")  # "move the file to trash can?"
    desktop.screenshot("delete-to-trash")
    desktop.keys(to_trash, "alt+y")
    instead = desktop.window("Confirm", other_than=(to_trash,))  # no trash: "delete instead?"
    desktop.screenshot("delete-instead")
    desktop.keys(instead, "alt+y")
    wait_for(lambda: remote_files(desktop.sdk) == {}, timeout=WAIT, what="paste.txt deleted")
    desktop.screenshot("deleted")
    stats = desktop.admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (0, 1)
    assert os.listdir(desktop.mount.path) == []


def test_open_a_file_just_copied_in(desktop):
    for name in os.listdir(desktop.mount.path):
        os.unlink(desktop.mount.path / name)
    data = b"open me\n"
    (desktop.root / "open.txt").write_bytes(data)
    desktop.mount.sh(f"cp {desktop.root / 'open.txt'} open.txt")
    desktop.go_to(desktop.mount.path)
    desktop.keys(desktop.main, "Home", "Return")  # the only file, opened with its default app
    rc = wait_for(lambda: (desktop.root / "opened.rc").exists()
                  and (desktop.root / "opened.rc").read_text().strip(),
                  timeout=WAIT, what="the default app to run")
    desktop.screenshot("opened")
    assert (desktop.root / "opened.err").read_text() == ""
    assert rc == "0"
    assert (desktop.root / "opened.bytes").read_bytes() == data
