"""Byte sizes as people write them on the command line (`10G`, `512M`) and as gemfs prints them:
binary units everywhere, as df does, so `--quota 20G`, `df -h` and `gemfs status` agree."""

from __future__ import annotations

import re

_UNITS = "KMGTP"
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGTP])(?:iB)?|B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`1048576`, `512K`, `10G`, `10GiB`, `1.5T` -> bytes (binary units, like df and ls -h).

    `10GB` is refused rather than guessed: it means 10**10 to some tools and 10 GiB to others.
    Raises ValueError with the reason.
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a byte size: {text!r} (write e.g. 1048576, 512M, 10G or 10GiB;"
                         " units are binary)")
    number, unit = float(m.group(1)), (m.group(2) or "").upper()
    factor = 1024 ** (_UNITS.index(unit) + 1) if unit else 1
    value = number * factor
    if value != int(value):
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def format_size(n: float) -> str:
    """Bytes as df -h would say them, with a space: `20 GiB`, `1.5 MiB`, `512 B`."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for i, unit in enumerate(_UNITS):
        scaled = n / 1024 ** (i + 1)
        if abs(scaled) < 1024 or unit == _UNITS[-1]:
            text = f"{scaled:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}iB"
    raise AssertionError("unreachable")
