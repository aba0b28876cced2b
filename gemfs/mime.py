"""Choose the MIME type an upload goes up with, so that Gemini can use the File.

The Files API stores any type it is given, but generation only accepts a short list
(files-api-wire.md §4). The host's `mimetypes` guesses are wrong for code (`.py` →
`text/x-python`, `.cu` → `application/cu-seeme`, `.ts` → a Qt type) and silent for many data files
(`.jsonl`, `.yaml`), so gemfs uses its own table first, then the content, and never the host's
`/etc/mime.types`.
"""

from __future__ import annotations

import os

TEXT = "text/plain"
OCTET = "application/octet-stream"

# Media types Gemini accepts in generation, under the spelling its docs use.
_MEDIA = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".wav": "audio/wav",
    ".mp3": "audio/mp3",
    ".aif": "audio/aiff",
    ".aiff": "audio/aiff",
    ".aac": "audio/aac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mpeg": "video/mpeg",
    ".mpg": "video/mpg",
    ".mov": "video/mov",
    ".avi": "video/avi",
    ".flv": "video/x-flv",
    ".webm": "video/webm",
    ".wmv": "video/wmv",
    ".3gp": "video/3gpp",
    ".3gpp": "video/3gpp",
    ".pdf": "application/pdf",
}

# Text that Gemini reads as text/plain: source code, markup, configuration and data files.
_TEXT_EXTENSIONS = frozenset(
    """
    .txt .text .log .md .markdown .rst .adoc .org .tex .bib .srt .vtt
    .csv .tsv .json .jsonl .ndjson .geojson .yaml .yml .toml .ini .cfg .conf .env .properties .xml
    .html .htm .xhtml .css .scss .sass .less .svg
    .py .pyi .pyx .ipynb .r .rmd .jl .m .sql .graphql .proto
    .c .h .cc .cpp .cxx .hh .hpp .hxx .cu .cuh .m .mm .rs .go .java .kt .kts .scala .groovy .gradle
    .cs .fs .vb .swift .dart .zig .nim .d .ada .adb .ads .f .f90 .f95 .for .pas .lua .pl .pm .rb
    .php .ex .exs .erl .hrl .hs .lhs .ml .mli .clj .cljs .lisp .el .scm .rkt .sml .v .sv .vhd .vhdl
    .js .mjs .cjs .jsx .ts .tsx .mts .cts .vue .svelte .astro
    .sh .bash .zsh .fish .ps1 .bat .cmd .mk .cmake .dockerfile .tf .hcl .nix .bzl .diff .patch
    """.split()
)

_TEXT_NAMES = frozenset(
    "makefile dockerfile readme license licence changelog authors notice copying gemfile rakefile"
    " procfile vagrantfile jenkinsfile cmakelists.txt".split()
)

# Leading bytes of the formats above, for names that say nothing.
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"ID3", "audio/mp3"),
    (0, b"\xff\xfb", "audio/mp3"),
    (0, b"\xff\xf3", "audio/mp3"),
    (0, b"\xff\xf2", "audio/mp3"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (4, b"ftypqt", "video/mov"),
    (4, b"ftypheic", "image/heic"),
    (4, b"ftypheix", "image/heic"),
    (4, b"ftypmif1", "image/heif"),
    (4, b"ftyp", "video/mp4"),
]

# How much of the content `guess` looks at.
SNIFF_BYTES = 8192


def from_name(name: str) -> str | None:
    """The type the name alone decides, or None when the name says nothing."""
    base = os.path.basename(name).lower()
    if base in _TEXT_NAMES:
        return TEXT
    _, ext = os.path.splitext(base)
    if ext in _MEDIA:
        return _MEDIA[ext]
    if ext in _TEXT_EXTENSIONS:
        return TEXT
    return None


def from_content(head: bytes) -> str:
    """The type the first bytes show: a known magic number, else UTF-8 text, else octet-stream."""
    for offset, magic, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF":
        kind = head[8:12]
        if kind == b"WAVE":
            return "audio/wav"
        if kind == b"WEBP":
            return "image/webp"
        if kind == b"AVI ":
            return "video/avi"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio/aiff"
    if _is_text(head):
        return TEXT
    return OCTET


def guess(name: str, head: bytes) -> str:
    """The MIME type for an upload of `head...` named `name`."""
    return from_name(name) or from_content(head)


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the end of the sample is still text.
        if e.start < len(head) - 3:
            return False
    return True


# Extensions for Files without a display name, named `<id><ext>` (semantics.md: the model).
_EXTENSION_FOR = {mime: ext for ext, mime in reversed(list(_MEDIA.items()))}
_EXTENSION_FOR.update(
    {
        "text/plain": ".txt",
        "audio/mpeg": ".mp3",
        "audio/x-wav": ".wav",
        "image/jpeg": ".jpg",
        "text/csv": ".csv",
        "text/html": ".html",
        "text/markdown": ".md",
        "application/json": ".json",
        "jsonl": ".jsonl",
        "application/jsonl": ".jsonl",
        "video/quicktime": ".mov",
    }
)


def extension_for(mime: str) -> str:
    """A file extension for a MIME type, '' when none is known."""
    mime = (mime or "").split(";")[0].strip().lower()
    if mime in _EXTENSION_FOR:
        return _EXTENSION_FOR[mime]
    import mimetypes

    return mimetypes.guess_extension(mime, strict=False) or ""
