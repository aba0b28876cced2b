"""`gemfs status`: the mounts, their backend, uploads in flight with a progress bar each, staged
bytes, listing age and quota used. Each running daemon is asked for its status now (its status
socket); the record it keeps in `registry` is the fallback. Sizes in binary units, as df."""

from __future__ import annotations

import sys
import time

from gemfs import registry
from gemfs.units import format_size as human


def bar(done: int, total: int, width: int = 30) -> str:
    fraction = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:5.1f}%"


def render(entry: dict, now: float | None = None) -> str:
    now = now or time.time()
    status = entry.get("status") or {}
    alive = registry.pid_alive(int(entry.get("pid", 0)))
    lines = [f"{entry['mountpoint']}  (pid {entry.get('pid')}{'' if alive else ', NOT RUNNING: stale'})",
             f"  backend:   {entry.get('backend')}"]
    if entry.get("data_dir"):
        lines.append(f"  data:      {entry['data_dir']}")
    quota = status.get("quota_bytes") or 0
    used = status.get("used_bytes") or 0
    lines.append(f"  files:     {status.get('files', '?')}, {human(used)} of {human(quota)} quota used")
    age = status.get("listing_age")
    lines.append("  listing:   " + ("not fetched yet" if age is None else f"{age:.1f}s old"))
    if status.get("last_error"):
        lines.append(f"  listing error: {status['last_error']}")
    lines.append(f"  staged:    {human(status.get('staged_bytes', 0))} in {status.get('pending_files', 0)} file(s)")
    uploads = status.get("uploads") or []
    lines.append(f"  uploads:   {len(uploads)} in flight")
    for up in uploads:
        elapsed = max(now - up.get("started", now), 1e-6)
        rate = up.get("sent", 0) / elapsed
        lines.append(f"    {up['path']}  {bar(up.get('sent', 0), up.get('size', 0))}"
                     f"  {human(up.get('sent', 0))}/{human(up.get('size', 0))}  {human(rate)}/s"
                     + ("  (still being written)" if up.get("writing") else ""))
    return "\n".join(lines)


def fresh(entry: dict) -> dict:
    """The entry with the daemon's status as it is now, when the daemon answers."""
    from gemfs.mount import live_status

    name = entry.get("control")
    if not name or not registry.pid_alive(int(entry.get("pid", 0))):
        return entry
    status = live_status(name)
    return {**entry, "status": status} if status is not None else entry


def run(mountpoint: str | None) -> int:
    if mountpoint:
        entry = registry.read(registry.canonical(mountpoint))
        if entry is None:
            print(f"gemfs: {mountpoint} is not a gemfs mount", file=sys.stderr)
            return 1
        entries = [entry]
    else:
        entries = registry.all_entries()
        if not entries:
            print("no gemfs mounts")
            return 0
    print("\n\n".join(render(fresh(e)) for e in entries))
    return 0
