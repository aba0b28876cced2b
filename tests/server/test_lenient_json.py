"""The request-body parser: JSON as the real API's front end reads it (single quotes, bare keys,
trailing commas), and refusals where that parser refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemfs.server.lenient_json import MAX_DEPTH, JsonSyntaxError, loads

# Valid Unicode only: JSON text with a lone surrogate is refused (below), not parsed.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=15,
)


@given(json_values, st.booleans())
def test_every_json_document_reads_as_json_does(value: object, ascii_only: bool) -> None:
    encoded = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    assert loads(encoded) == json.loads(encoded)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # The REST docs' start request (wire doc §12).
        (b"{'file': {'display_name': 'AUDIO'}}", {"file": {"display_name": "AUDIO"}}),
        (
            b"{'a': 'it\\'s', \"b\": \"say \\\"hi\\\"\", 'c': \"'\"}",
            {"a": "it's", "b": 'say "hi"', "c": "'"},
        ),
        (b"{'e': '\\u00e9\\ud83d\\ude00\\v\\q\\/'}", {"e": "\u00e9\U0001f600\v" + "q/"}),
        (b"{file: {displayName: 'x', $a_1: 2}}", {"file": {"displayName": "x", "$a_1": 2}}),
        (b"{nullable: null, trueish: true}", {"nullable": None, "trueish": True}),
        (b"{'a': [1, 2,], 'b': {},}", {"a": [1, 2], "b": {}}),
        (b"\x0b\x0c {'raw': 'tab\there'} \r\n", {"raw": "tab\there"}),
        (b"{'n': -0, 'f': 1.5e3, 'g': -.5, 'big': 18446744073709551615}",
         {"n": 0, "f": 1500.0, "g": -0.5, "big": 2**64 - 1}),
        (b"[]", []),
        (b"'just a string'", "just a string"),
    ],
)
def test_accepts_what_the_real_parser_accepts(body: bytes, expected: object) -> None:
    assert loads(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "Unexpected end of string. Expected : between key:value pair."),
        (b"{'a': 1} x", "Parsing terminated before end of input."),
        (b"{'a': 1}{}", "Parsing terminated before end of input."),
        (b"{'a' 1}", "Expected : between key:value pair."),
        (b"{'a': 1 'b': 2}", "Expected , or } after key:value pair."),
        (b"{,}", "Expected an object key or }."),
        (b"{true: 1}", "Expected an object key or }."),
        (b"{1: 1}", "Expected an object key or }."),
        (b"{'a': }", "Unexpected token."),
        (b"{'a': @}", "Expected a value."),
        (b"{'a': undefined}", "Unexpected token."),
        (b"[1 2]", "Expected , or ] after array value."),
        (b"[,]", "Unexpected token."),
        (b"{'a': 'open", "Closing quote expected in string."),
        (b"{'a': \"mixed'}", "Closing quote expected in string."),
        (b"{'a': 01}", "Octal/hex numbers are not valid JSON values."),
        (b"{'a': -01}", "Octal/hex numbers are not valid JSON values."),
        (b"{'a': 0x10}", "Octal/hex numbers are not valid JSON values."),
        (b"{'a': 1e999}", "Number exceeds the range of double."),
        (b"{'a': 1-2}", "Unable to parse number."),
        (b"{'a': -}", "Unable to parse number."),
        (b"{'a': '\\ud800'}", "Missing low surrogate."),
        (b"{'a': '\\ud800\\u0041'}", "Invalid low surrogate."),
        (b"{'a': '\\udc00'}", "Invalid unicode code point."),
        (b"{'a': '\\u12", "Illegal hex string."),
        (b"{'a': '\\u12'}", "Invalid escape sequence."),
        (b"{'a': '\\uzzzz'}", "Invalid escape sequence."),
        (b"{'a': '\xff'}", "Encountered non UTF-8 code points."),
        (b"", "Unexpected end of string. Expected a value."),
    ],
)
def test_refuses_what_the_real_parser_refuses(body: bytes, message: str) -> None:
    with pytest.raises(JsonSyntaxError) as exc_info:
        loads(body)
    assert str(exc_info.value).split("\n")[0] == message


def test_errors_show_where_like_the_real_ones() -> None:
    """The message, then up to 20 characters either side of the failure, a caret under it."""
    with pytest.raises(JsonSyntaxError) as exc_info:
        loads(b"{'file': {'display_name' 'AUDIO'}}")
    assert str(exc_info.value) == (
        "Expected : between key:value pair.\n"
        "e': {'display_name' 'AUDIO'}}\n"
        "                    ^"
    )


def test_nesting_is_bounded() -> None:
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    for deep in (b"[" * (MAX_DEPTH + 1), b"{a:" * (MAX_DEPTH + 1)):
        with pytest.raises(JsonSyntaxError, match="too deep"):
            loads(deep)
    with pytest.raises(JsonSyntaxError, match="too deep"):
        loads(b"[" * 100_000)  # no RecursionError
