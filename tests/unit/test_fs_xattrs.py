"""The `user.gemini.*` extended attributes of a File (gemfs/fs.py `record_xattrs`): each value as
the File resource has it, sha256 decoded from the API's base64 of the hex digest."""

from __future__ import annotations

import base64
import hashlib

from gemfs.cache import hex_from_api
from gemfs.fs import record_xattrs
from gemfs.model import FileRecord

HEX = hashlib.sha256(b"bytes").hexdigest()


def test_every_attribute_from_the_resource():
    record = FileRecord.from_api({
        "name": "files/abc123", "displayName": "a.txt", "mimeType": "text/plain",
        "sizeBytes": "5", "createTime": "2026-11-30T10:00:00.123456Z",
        "expirationTime": "2026-12-02T10:00:00.123456Z",
        "sha256Hash": base64.b64encode(HEX.encode()).decode(),
        "uri": "https://generativelanguage.googleapis.com/v1beta/files/abc123",
        "state": "PROCESSING",
    })
    assert record_xattrs(record) == {
        "user.gemini.uri": b"https://generativelanguage.googleapis.com/v1beta/files/abc123",
        "user.gemini.name": b"files/abc123",
        "user.gemini.mime_type": b"text/plain",
        "user.gemini.state": b"PROCESSING",
        "user.gemini.sha256": HEX.encode(),
        "user.gemini.expiration_time": b"2026-12-02T10:00:00.123456Z",
    }


def test_fields_the_file_lacks_are_no_attributes():
    record = FileRecord.from_api({"name": "files/x", "state": "ACTIVE"})
    assert record_xattrs(record) == {"user.gemini.name": b"files/x",
                                     "user.gemini.state": b"ACTIVE"}


def test_sha256_forms():
    assert hex_from_api(base64.b64encode(HEX.encode()).decode()) == HEX  # what the API sends
    assert hex_from_api(base64.b64encode(bytes.fromhex(HEX)).decode()) == HEX  # the raw digest
    assert hex_from_api(base64.b64encode(HEX.upper().encode()).decode()) == HEX
    for bad in (None, "", "not base64!", base64.b64encode(b"short").decode()):
        assert hex_from_api(bad) is None
