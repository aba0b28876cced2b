"""Small file-system steps that durability rests on, in one place: fsync a file or a directory
(so a rename or a new name survives a crash), and unlink a file that may already be gone."""

from __future__ import annotations

import os


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path) -> None:
    """Remove `path`; one that is already gone counts as removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
