"""Names through a real mount with the real tools (docs/SEMANTICS.md, Names): names map both
ways exactly, names too long are refused at create, folders take the time of what is in them,
`rm -r` / `rm -rf` of any folder the mount shows exits 0, and `cp -r` of a folder holding `X`
and `X.meta.json` keeps both."""

from __future__ import annotations

import io
import json
import os
import subprocess

from tests.mount.conftest import Mount, wait_for
from tests.mount.test_copy import remote_files, shlex


def _src(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_names_that_looked_alike_stay_apart_and_reachable(mount, sdk, admin, tmp_path):
    # (name given to cp, display name uploaded). Control characters are legal in Linux names
    # and shown as they are; only an escape gemfs itself would read back is escaped.
    cases = [
        ("a\nb", "a\nb"),
        ("a%0Ab", "a%0Ab"),
        ("tab\there", "tab\there"),
        ("100%", "100%"),
        ("50%off %41", "50%off %41"),
        ("%2500", "%00"),  # how a display name '%00' is shown: created back, it is that name
        ("%2E%2E", ".."),  # how a display name '..' is shown
        ("%252E", "%2E"),
    ]
    admin.reset_stats()
    for i, (local, _) in enumerate(cases):
        src = _src(tmp_path, f"s{i}", f"payload {i}\n".encode())
        subprocess.run(["cp", str(src), str(mount.path / local)], check=True, timeout=60)
    assert admin.stats()["upload_start"] == len(cases)  # none replaced another
    remote = remote_files(sdk)
    assert sorted(remote) == sorted(display for _, display in cases)
    assert all(len(files) == 1 for files in remote.values())
    # Each is listed under, and reachable by, exactly the name it was created under.
    assert sorted(os.listdir(mount.path)) == sorted(local for local, _ in cases)
    ls = mount.sh("ls -1b").stdout.splitlines()
    assert "a\\nb" in ls and "a%0Ab" in ls  # ls quotes the newline itself
    for i, (local, display) in enumerate(cases):
        meta = json.loads(mount.sh(f"cat -- {shlex(local + '.meta.json')}").stdout)
        assert meta["displayName"] == display and meta["name"] == remote[display][0].name
        assert os.stat(mount.path / local).st_size == len(f"payload {i}\n")
    for local, _ in cases:
        subprocess.run(["rm", "--", local], cwd=mount.path, check=True, timeout=60)
    assert remote_files(sdk) == {}
    assert os.listdir(mount.path) == []


def test_a_name_over_255_bytes_is_refused_at_create(mount, sdk, admin, tmp_path):
    src = _src(tmp_path, "src", b"long name\n")
    ok = "n" * 251 + ".txt"  # exactly 255 bytes
    long = "n" * 252 + ".txt"  # 256 bytes: FUSE would let it through, the mount must not
    admin.reset_stats()
    for _ in range(2):
        proc = mount.sh(f"cp {shlex(src)} {long}", check=False)
        assert proc.returncode != 0 and "File name too long" in proc.stderr, proc.stderr
        mount.sh(f"cp {shlex(src)} {ok}")
    assert admin.stats()["upload_start"] == 2
    assert admin.stats().get("delete", 0) == 1  # the second cp replaced the first
    assert list(remote_files(sdk)) == [ok]
    assert os.listdir(mount.path) == [ok]
    proc = mount.sh(f"mkdir {'d' * 256}", check=False)
    assert proc.returncode != 0 and "File name too long" in proc.stderr
    # A name that stands for a lone surrogate (how another client's "\ud800" is shown): the
    # API refuses such a display name, so the mount refuses it at once.
    proc = mount.sh(f"cp {shlex(src)} x%ED%A0%80", check=False)
    assert proc.returncode != 0 and "Invalid argument" in proc.stderr, proc.stderr
    assert admin.stats()["upload_start"] == 2
    mount.sh(f"rm {ok}")
    assert remote_files(sdk) == {}


def test_a_path_over_the_display_name_limit_is_refused_before_staging(mount, sdk, admin, tmp_path):
    src = _src(tmp_path, "src", b"x" * 100_000)
    a, b = "a" * 250, "b" * 250  # 'a/b' is 501 characters: room for a 10-character name
    mount.sh(f"mkdir -p {a}/{b}")
    admin.reset_stats()
    proc = mount.sh(f"cp {shlex(src)} {a}/{b}/{'c' * 11}", check=False)
    assert proc.returncode != 0 and "File name too long" in proc.stderr, proc.stderr
    # Refused at create: no staged byte, no upload started.
    assert admin.stats().get("upload_start", 0) == 0
    assert [f for _, _, fs in os.walk(mount.staging) for f in fs if f != "lock"] == []
    # '%00' is one character of the display name, not three: this one fits.
    mount.sh(f"cp {shlex(src)} {a}/{b}/%00%00%00%00%00x")
    assert list(remote_files(sdk)) == [f"{a}/{b}/\x00\x00\x00\x00\x00x"]
    proc = mount.sh(f"mkdir {a}/{'e' * 260}", check=False)
    assert proc.returncode != 0 and "File name too long" in proc.stderr
    mount.sh(f"rm -r {a}")
    assert remote_files(sdk) == {}


def test_folders_take_the_newest_update_time_inside_them(mount, sdk, tmp_path):
    for name in ("top/old.txt", "top/sub/new.txt"):
        sdk.files.upload(file=io.BytesIO(b"x"),
                         config={"mime_type": "text/plain", "display_name": name})
    wait_for(lambda: os.path.exists(mount.path / "top" / "sub" / "new.txt"), what="listing")
    times = {f.display_name: f.update_time for f in sdk.files.list()}
    assert times["top/sub/new.txt"] > times["top/old.txt"]
    newest = os.stat(mount.path / "top" / "sub" / "new.txt").st_mtime_ns
    assert newest != os.stat(mount.path / "top" / "old.txt").st_mtime_ns
    for folder in ("top", "top/sub", "."):
        # The kernel may hold a folder's attributes from before new.txt was listed for up to
        # --attr-timeout (1 s here), like any other attribute.
        st = wait_for(lambda: (lambda st: st if st.st_mtime_ns == newest else None)(
            os.stat(mount.path / folder)), what=f"{folder} to take new.txt's time")
        assert st.st_ctime_ns == st.st_mtime_ns
    # A folder made with mkdir and still empty: its mkdir time, not the mount's.
    before = os.stat(mount.path / "top").st_mtime
    mount.sh("mkdir top/empty")
    made = os.stat(mount.path / "top" / "empty").st_mtime
    assert made >= before


def test_rm_r_of_a_folder_that_exists_only_because_of_its_files(mount, sdk):
    for name in ("only/a.txt", "only/deep/er/b.txt", "only/deep/c.txt", "keep.txt"):
        sdk.files.upload(file=io.BytesIO(b"x"),
                         config={"mime_type": "text/plain", "display_name": name})
    wait_for(lambda: os.path.exists(mount.path / "only" / "deep" / "er" / "b.txt"), what="listing")
    proc = mount.sh("rm -r only", check=False)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(mount.path) == ["keep.txt"]
    assert list(remote_files(sdk)) == ["keep.txt"]


def test_rm_rf_of_a_folder_and_a_file_that_share_a_name(mount, sdk):
    # A File 'box/a' and a folder 'box/a' (File 'box/a/b'): the File shows as 'a~<id>'.
    first = sdk.files.upload(file=io.BytesIO(b"file"),
                             config={"mime_type": "text/plain", "display_name": "box/a"})
    sdk.files.upload(file=io.BytesIO(b"in folder"),
                     config={"mime_type": "text/plain", "display_name": "box/a/b"})
    sdk.files.upload(file=io.BytesIO(b"x"),
                     config={"mime_type": "text/plain", "display_name": "box/z"})
    file_id = first.name.removeprefix("files/")
    wait_for(lambda: sorted(os.listdir(mount.path / "box")) == ["a", f"a~{file_id}", "z"]
             if os.path.isdir(mount.path / "box") else None, what="listing")
    proc = mount.sh("rm -rf box", check=False)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(mount.path) == []
    assert remote_files(sdk) == {}
    # The same pair named directly on the command line, in both orders.
    for names in (("a", "a~{id}"), ("a~{id}", "a")):
        first = sdk.files.upload(file=io.BytesIO(b"file"),
                                 config={"mime_type": "text/plain", "display_name": "a"})
        sdk.files.upload(file=io.BytesIO(b"in folder"),
                         config={"mime_type": "text/plain", "display_name": "a/b"})
        file_id = first.name.removeprefix("files/")
        wait_for(lambda: len(os.listdir(mount.path)) == 2, what="listing")
        args = " ".join(n.format(id=file_id) for n in names)
        proc = mount.sh(f"rm -rf {args}", check=False)
        assert proc.returncode == 0, proc.stderr
        assert os.listdir(mount.path) == []
        assert remote_files(sdk) == {}


def _json_or_none(path):
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _x_and_its_namesake(tmp_path, tag: str):
    src = tmp_path / f"src-{tag}"
    src.mkdir()
    (src / "X").write_bytes(b"the file X\n")
    (src / "X.meta.json").write_bytes(b'{"mine": "a file of my own, not a sidecar"}\n')
    return src


def test_cp_r_of_a_folder_holding_x_and_x_meta_json_keeps_both(tmp_path, gemfs_server, sdk, admin):
    # A long attribute cache: the sidecar must read whole right after the copy all the same.
    mount = Mount(tmp_path, gemfs_server, extra=("--attr-timeout", "60")).start()
    try:
        _cp_r_keeps_both(mount, sdk, admin, tmp_path)
    finally:
        mount.stop()


def _cp_r_keeps_both(mount, sdk, admin, tmp_path):
    src = _x_and_its_namesake(tmp_path, "a")
    # Into a new folder (cp creates each copy with O_EXCL), in the order the source lists them,
    # then file by file in both orders, so `X` goes first at least once.
    mount.sh(f"cp -r {shlex(src)} d1")
    mount.sh(f"mkdir d2 d3 && cp {shlex(src / 'X')} {shlex(src / 'X.meta.json')} d2/"
             f" && cp {shlex(src / 'X.meta.json')} {shlex(src / 'X')} d3/")
    for folder in ("d1", "d2", "d3"):
        made = {f.display_name: f for f in sdk.files.list() if f.display_name.startswith(folder)}
        assert sorted(made) == [f"{folder}/X", f"{folder}/X.meta.json"]
        own_id = made[f"{folder}/X.meta.json"].name.removeprefix("files/")
        # Listed under its suffixed name; X.meta.json still is X's sidecar.
        assert sorted(os.listdir(mount.path / folder)) == ["X", f"X.meta~{own_id}.json"]
        # The copy's release (after cp exits) hands the name back to the sidecar.
        meta = wait_for(lambda: _json_or_none(mount.path / folder / "X.meta.json"),
                        what="the sidecar read whole")
        assert meta["name"] == made[f"{folder}/X"].name
        own = json.loads((mount.path / folder / f"X.meta~{own_id}.json.meta.json").read_text())
        assert own["sizeBytes"] == str(len((src / "X.meta.json").read_bytes()))
    # Again into the existing folder: each File is replaced, none is duplicated.
    before = _only_x_and_namesake_in(sdk, "d1")
    mount.sh(f"cp -r {shlex(src)}/. d1/")
    after = _only_x_and_namesake_in(sdk, "d1")
    assert all(after[n].name != before[n].name for n in after)
    # rsync renames its temp file onto the name: the same outcome.
    admin.reset_stats()
    mount.sh(f"rsync -r {shlex(src)}/ d4/")
    _only_x_and_namesake_in(sdk, "d4")
    assert admin.stats()["upload_start"] == 2
    # Anyone else still finds the read-only sidecar there.
    assert "Permission denied" in mount.sh("echo x > d1/X.meta.json", check=False).stderr
    assert mount.sh("cat d1/X.meta.json > X.meta.json.copy && cat d1/X.meta.json > X.meta.json"
                    " && rm X.meta.json.copy", check=False).returncode == 0
    mount.sh("rm -rf d1 d2 d3 d4 X.meta.json")
    assert remote_files(sdk) == {}


def _only_x_and_namesake_in(sdk, folder: str) -> dict:
    found = {}
    for f in sdk.files.list():
        if f.display_name.startswith(folder + "/"):
            assert f.display_name not in found, f"{f.display_name} uploaded twice"
            found[f.display_name] = f
    assert sorted(found) == [f"{folder}/X", f"{folder}/X.meta.json"], sorted(found)
    return found
