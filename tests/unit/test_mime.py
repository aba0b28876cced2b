"""MIME types Gemini can use, chosen from the name first and the content second."""

import pytest

from gemfs import mime


@pytest.mark.parametrize(
    "name, expected",
    [
        ("song.mp3", "audio/mp3"), ("a.WAV", "audio/wav"), ("photo.jpg", "image/jpeg"),
        ("p.png", "image/png"), ("doc.pdf", "application/pdf"), ("clip.mp4", "video/mp4"),
        ("clip.mov", "video/mov"),
        # Code and data text: text/plain, never the host's x-python or cu-seeme guesses.
        ("main.py", "text/plain"), ("app.ts", "text/plain"), ("lib.rs", "text/plain"),
        ("k.cu", "text/plain"), ("m.go", "text/plain"), ("rows.jsonl", "text/plain"),
        ("c.yaml", "text/plain"), ("t.csv", "text/plain"), ("Makefile", "text/plain"),
        ("README", "text/plain"),
    ],
)
def test_from_name(name, expected):
    assert mime.guess(name, b"\x00\x01binary") == expected


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"plain words\n", "text/plain"),
        ("héllo wörld".encode(), "text/plain"),
        ("cut é".encode()[:-1], "text/plain"),  # a character cut by the sample's end
        (b"\x89PNG\r\n\x1a\n....", "image/png"),
        (b"%PDF-1.7", "application/pdf"),
        (b"ID3\x03\x00", "audio/mp3"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
        (b"\xff\xfe\x00\x00garbage\x00", "application/octet-stream"),
        (b"", "text/plain"),
    ],
)
def test_from_content_when_the_name_says_nothing(head, expected):
    assert mime.guess("noextension", head) == expected


def test_extension_for():
    assert mime.extension_for("audio/mpeg") == ".mp3"
    assert mime.extension_for("text/plain") == ".txt"
    assert mime.extension_for("image/png") == ".png"
    assert mime.extension_for("nonsense/type") == ""
