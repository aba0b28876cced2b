"""`python -m bench.run --quick` runs every case end to end on tiny sizes and writes JSON with
numeric medians and the request counts the targets rest on, so the benchmark cannot rot
unnoticed. Timings are not judged here (a busy machine would make that flaky); counts are."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import statistics
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

CASES = ("big_upload", "small_files", "listing", "probes", "resume")
PER_FILE_OPS = ("get", "download")  # what a listing must never call per File
KEY = "smoke-key-7c1e0f3a9b"  # distinctive, so a leak into the output would be found


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """One `bench.run --quick` for the whole session, whichever pytest-xdist workers run this
    module's tests: the first to get here runs it (under a lock in the session's shared temp
    directory), the others read what it left."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "bench-results"
    with open(shared / "bench-results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "run.json").exists():
            out.mkdir(exist_ok=True)
            env = {**os.environ, "GEMFS_BENCH_KEY": KEY}
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.run", "--quick", "--results-dir", str(out)],
                    cwd=REPO_ROOT, capture_output=True, text=True, timeout=110, env=env)
                run = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
            except subprocess.TimeoutExpired as e:  # recorded too: the run happens once, fails once
                run = {"returncode": -1, "stdout": str(e.stdout or ""),
                       "stderr": f"bench.run --quick took over 110 s\n{e.stderr or ''}"}
            (out / "run.json").write_text(json.dumps(run))
    run = json.loads((out / "run.json").read_text())
    assert run["returncode"] == 0, run["stderr"][-4000:]
    files = list(out.glob("*-quick.json"))
    assert len(files) == 1, files
    assert not (out / "latest.json").exists()  # quick runs never replace the full run's figures
    data = json.loads(files[0].read_text())
    data["_stdout"], data["_stderr"] = run["stdout"], run["stderr"]
    data["_raw"] = files[0].read_text()
    return data


def rows(result, case):
    return {row["measure"]: row for row in result["cases"][case]}


def row_starting(result, case, prefix):
    found = [row for measure, row in rows(result, case).items() if measure.startswith(prefix)]
    assert len(found) == 1, (prefix, list(rows(result, case)))
    return found[0]


@pytest.mark.heavy(50)  # it runs `bench.run --quick` (the module fixture) for the others
def test_every_case_has_numeric_medians_and_a_verdict(result):
    assert set(result["cases"]) == set(CASES)
    for case in CASES:
        judged = [row for row in result["cases"][case] if row["passed"] is not None]
        assert judged, case
        for row in result["cases"][case]:
            values = [v for v in (row["gemfs"], row["sdk"]) if v is not None]
            assert values, row
            assert all(isinstance(v, (int, float)) and v >= 0 for v in values), row
    for field in ("cpu", "cores", "ram_bytes", "kernel", "python", "mfusepy", "libfuse"):
        assert result["machine"][field], field


VERDICTS = {True: "PASS", False: "MISS", None: "info"}
HEADER = ["case", "measure", "gemfs", "SDK", "ratio", "target", "result",
          "requests: gemfs", "requests: SDK"]


def printed_table(stdout):
    """The plain table `bench.run` prints: its header, then one list of cells per row, cut at the
    columns its dashed line marks (cells are left-justified and two spaces apart)."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.split()[:2] == ["case", "measure"]]
    assert len(starts) == 1, stdout[-4000:]
    head, dashes = lines[starts[0]], lines[starts[0] + 1]
    assert set(dashes) <= {"-", " "}, dashes
    spans, col = [], 0
    for dash in dashes.split("  "):
        spans.append((col, col + len(dash)))
        col += len(dash) + 2
    cut = lambda line: [line[a:b].strip() for a, b in spans]  # noqa: E731
    body = []
    for line in lines[starts[0] + 2:]:
        if not line.strip():
            break
        body.append(cut(line))
    return cut(head), body


def test_the_printed_table_has_one_row_per_measure_with_its_verdict(result):
    header, body = printed_table(result["_stdout"])
    assert header == HEADER
    measured = [row for case in CASES for row in result["cases"][case]]
    assert len(body) == len(measured)
    for cells, row in zip(body, measured):
        assert len(cells) == len(HEADER) and all(cells), cells
        assert cells[0] == row["case"] and cells[1] == row["measure"].strip(), (cells, row)
        assert cells[5] == (row["target"] or "-"), (cells, row)
        assert cells[6] == VERDICTS[row["passed"]], (cells, row)
    assert {cells[6] for cells in body} <= set(VERDICTS.values())


def expected_verdict(result, row):
    """The verdict a row's own numbers give under its target, recomputed independently of
    `bench.run`; an unknown target fails the test, so a new target gets a check here too."""
    target, g, s = row["target"], row["gemfs"], row["sdk"]
    values = [v for v in (g, s) if v is not None]
    requests = row["requests"].get("gemfs", {})
    if target == "":
        return None
    if m := re.fullmatch(r"ratio <= ([\d.]+)", target):
        assert row["ratio"] == pytest.approx(g / s), row
        return g / s <= float(m[1])
    if m := re.fullmatch(r"<= ([\d.]+) MB", target):  # peak RSS: every process measured
        return max(values) <= float(m[1])
    if m := re.fullmatch(r"<= ([\d.]+) MiB", target):  # bytes re-sent: gemfs's side
        return g <= float(m[1])
    if m := re.fullmatch(r">= ([\d.]+)x", target):
        return g >= float(m[1])
    if target in ("0 requests", "0 API requests"):
        return sum(requests.values()) == 0
    if m := re.fullmatch(r"(\d+) pages, 0 per-file", target):
        pages = int(m[1])
        if row["measure"].startswith("pages of that background refresh"):  # every run's refresh,
            listing = result["cases"]["listing"]  # and no per-file call in any listing step
            per_file = [op for r in listing for op, n in r["requests"].get("gemfs", {}).items()
                        if n and op in PER_FILE_OPS]
            return all(p == pages for p in result["details"]["listing"]["refresh_pages"]) \
                and not per_file
        return g == pages and not any(requests.get(op) for op in PER_FILE_OPS)
    if target == "returns before the refresh":
        return all(result["details"]["listing"]["no_wait"])
    if target == "<= TTL + refresh + 1 s":  # another client's File, seen through a listing
        listing = result["details"]["listing"]
        return g <= listing["list_ttl"] + statistics.median(listing["refresh_done_s"]) + 1.0
    if target == "1":
        return g == 1 and min(row["samples"]["gemfs"]) == 1
    raise AssertionError(f"no check for target {target!r} of {row['measure']!r}")


def test_every_verdict_matches_the_numbers_it_prints(result):
    judged = 0
    for case in CASES:
        for row in result["cases"][case]:
            assert row["passed"] == expected_verdict(result, row), row
            judged += row["passed"] is not None
    assert judged >= len(CASES)


def test_probes_make_no_api_request(result):
    row = row_starting(result, "probes", f"{result['sizes']['probe_count']} stat()")
    assert row["gemfs"] > 0
    assert sum(row["requests"]["gemfs"].values()) == 0
    assert row["passed"] is True


def test_listing_takes_one_page_per_hundred_files_and_no_per_file_call(result):
    pages = math.ceil(result["sizes"]["list_count"] / 100)
    cold = row_starting(result, "listing", "requests of the first ls -l")
    assert cold["gemfs"] == pages and cold["sdk"] == pages
    assert cold["requests"]["gemfs"] == {"list": pages}
    refresh = row_starting(result, "listing", "pages of that background refresh")
    assert refresh["gemfs"] == pages
    assert result["details"]["listing"]["refresh_pages"] == [pages] * result["runs"]
    warm = row_starting(result, "listing", "second ls -l")
    assert sum(warm["requests"]["gemfs"].values()) == 0


def test_uploads_take_the_same_requests_through_gemfs_and_the_sdk(result):
    n = result["sizes"]["small_count"]
    small = row_starting(result, "small_files", "cp -r")
    for side in ("gemfs", "sdk"):
        counts = small["requests"][side]
        assert counts["upload_start"] == n and counts["upload_finalize"] == n, (side, counts)
    big = row_starting(result, "big_upload", "cp ")
    chunks = math.ceil(result["sizes"]["big_bytes"] / (8 * 1024 * 1024))
    for side in ("gemfs", "sdk"):
        counts = big["requests"][side]
        assert counts["upload_start"] == 1 and counts["upload_finalize"] == 1, (side, counts)
        assert counts.get("upload_chunk", 0) == chunks - 1, (side, counts)


def test_a_reset_and_a_lost_finalize_resend_one_chunk_and_make_one_file(result):
    resent = row_starting(result, "resume", "  bytes re-sent")
    assert 0 < resent["gemfs"] <= 8 and resent["sdk"] >= result["sizes"]["big_bytes"] / 2**20
    made = row_starting(result, "resume", "  Files made")
    assert (made["gemfs"], made["sdk"]) == (1, 2)


def test_peak_rss_is_measured_for_daemon_and_server(result):
    daemon = row_starting(result, "big_upload", "peak RSS: mount daemon")
    server = row_starting(result, "big_upload", "peak RSS: server")
    assert 10 < daemon["gemfs"] < 10_000 and 10 < server["gemfs"] < 10_000


def test_the_api_key_never_appears_in_the_output(result):
    for text in (result["_stdout"], result["_stderr"], result["_raw"]):
        assert KEY not in text
