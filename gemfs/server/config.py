"""The settings of one `gemfs serve` process, and how API keys become projects."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from gemfs.server import wire

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_SWEEP_INTERVAL_SECONDS = 60.0


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "gemfs" / "server"


def project_of_key(key: str) -> str:
    """The project a key stands for, as stored: sha256 of the key, so the key is never kept."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    # Projects (sha256 of each configured key); empty = open mode, any non-empty key works.
    projects: frozenset[str] = frozenset()
    file_ttl_seconds: float = wire.DEFAULT_FILE_TTL_SECONDS
    max_file_size: int = wire.DEFAULT_MAX_FILE_SIZE
    project_quota: int = wire.DEFAULT_PROJECT_QUOTA
    latency_seconds: float = 0.0
    # Seconds a File stays PROCESSING, by class of MIME type (`wire.processing_class`).
    processing_seconds: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(wire.DEFAULT_PROCESSING_SECONDS)
    )
    admin: bool = False
    public_url: str | None = None
    sweep_interval_seconds: float = DEFAULT_SWEEP_INTERVAL_SECONDS
    access_log: bool = False
    # Refuse an upload start without a size (400), as a service that needs it would; the
    # default accepts it (wire.UNSIZED_UPLOADS_ACCEPTED).
    require_upload_size: bool = not wire.UNSIZED_UPLOADS_ACCEPTED

    @property
    def open_mode(self) -> bool:
        return not self.projects
