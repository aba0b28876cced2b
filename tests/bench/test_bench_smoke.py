"""`python -m bench.run --quick` runs every case end to end on tiny sizes and writes JSON with
numeric medians and the request counts the targets rest on, so the benchmark cannot rot
unnoticed. Timings are not judged here (a busy machine would make that flaky); counts are."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

CASES = ("big_upload", "small_files", "listing", "probes", "resume")
KEY = "smoke-key-7c1e0f3a9b"  # distinctive, so a leak into the output would be found


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-results")
    env = {**os.environ, "GEMFS_BENCH_KEY": KEY}
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--results-dir", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = list(out.glob("*-quick.json"))
    assert len(files) == 1, files
    assert not (out / "latest.json").exists()  # quick runs never replace the full run's figures
    data = json.loads(files[0].read_text())
    data["_stdout"], data["_stderr"] = proc.stdout, proc.stderr
    data["_raw"] = files[0].read_text()
    return data


def rows(result, case):
    return {row["measure"]: row for row in result["cases"][case]}


def row_starting(result, case, prefix):
    found = [row for measure, row in rows(result, case).items() if measure.startswith(prefix)]
    assert len(found) == 1, (prefix, list(rows(result, case)))
    return found[0]


def test_every_case_has_numeric_medians_and_a_verdict(result):
    assert set(result["cases"]) == set(CASES)
    for case in CASES:
        judged = [row for row in result["cases"][case] if row["passed"] is not None]
        assert judged, case
        for row in result["cases"][case]:
            values = [v for v in (row["gemfs"], row["sdk"]) if v is not None]
            assert values, row
            assert all(isinstance(v, (int, float)) and v >= 0 for v in values), row
    assert "PASS" in result["_stdout"] or "MISS" in result["_stdout"]
    for field in ("cpu", "cores", "ram_bytes", "kernel", "python", "mfusepy", "libfuse"):
        assert result["machine"][field], field


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
