"""The File record the mount works with: the Files API resource as camelCase JSON plus the few
fields the file system needs, parsed once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


def parse_time(value: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp (the API's 'Z' form, up to 9 digits)."""
    if not value:
        return 0.0
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python parses at most 6 fractional digits; the API writes up to 9.
    if "." in text:
        head, rest = text.split(".", 1)
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    return datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class FileRecord:
    """One remote File. `api` is the resource exactly as gemfs renders it in the sidecar."""

    id: str
    display_name: str | None
    mime_type: str
    size: int
    create_time: float
    update_time: float
    expiration_time: float
    state: str
    source: str
    download_uri: str | None
    api: dict = field(compare=False, hash=False, repr=False)

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    @property
    def generated(self) -> bool:
        """Only generated Files (they carry a downloadUri) can be read back."""
        return bool(self.download_uri)

    @classmethod
    def from_api(cls, api: dict) -> "FileRecord":
        name = api.get("name", "")
        create = parse_time(api.get("createTime"))
        return cls(
            id=name.split("/", 1)[1] if "/" in name else name,
            display_name=api.get("displayName") or None,
            mime_type=api.get("mimeType", ""),
            size=int(api.get("sizeBytes") or 0),
            create_time=create,
            update_time=parse_time(api.get("updateTime")) or create,
            expiration_time=parse_time(api.get("expirationTime")),
            state=api.get("state", "STATE_UNSPECIFIED"),
            source=api.get("source", "SOURCE_UNSPECIFIED"),
            download_uri=api.get("downloadUri") or None,
            api=api,
        )
