"""Request-body JSON as the real API's front end reads it: the one parser of the server.

Google's front end does not use a strict JSON parser. The REST docs' own upload start sends
`{'file': {'display_name': 'AUDIO'}}` and gets a File back (wire doc §12), so a strict parser
would refuse a documented request. This module follows the grammar of the parser Google
published with protobuf (`util/internal/json_stream_parser.cc`, the JSON side of its REST
transcoding), which accepts, beyond JSON:

* strings in single quotes as well as double quotes; in both, `\\v` is an escape and a
  backslash before any other character stands for that character (`\\'` is `'`);
* raw control characters inside strings;
* bare object keys: a letter, `_` or `$`, then letters, digits, `_` or `$` (`{file: {}}`),
  but not `true`, `false` or `null` themselves;
* a trailing comma before `}` or `]`;
* the whitespace of C's `isspace` (space, tab, LF, VT, FF, CR).

It refuses, as that parser does: anything after the value, invalid UTF-8, numbers with a
leading zero (`01`, `-01`, `0x1`), numbers out of the range of a double, a lone or reversed
UTF-16 surrogate in a `\\u` escape, an unterminated string, and missing separators. Objects and
arrays nested more than 100 deep are refused (the real parser limits objects only; no request
of this API nests anything).

Errors read like the real ones: "Invalid JSON payload received. " (added by the caller) + the
parser's message + the 20 characters either side of the failure and a caret under it.
"""

from __future__ import annotations

import math

MAX_DEPTH = 100

_WHITESPACE = " \t\n\v\f\r"
_NUMBER_CHARS = frozenset("0123456789.eE+-x")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_KEYWORDS = (("true", True), ("false", False), ("null", None))
_CONTEXT = 20


class JsonSyntaxError(ValueError):
    """The body is not what the real API's parser accepts; str() is its message."""


def _is_letter(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or c in "_$"


def _is_alphanumeric(c: str) -> bool:
    return _is_letter(c) or "0" <= c <= "9"


def loads(data: bytes) -> object:
    """The value in `data`; JsonSyntaxError if the real API would refuse it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonSyntaxError("Encountered non UTF-8 code points.") from None
    parser = _Parser(text)
    value = parser.value(0, "Expected a value.")
    parser.skip_whitespace()
    if parser.i < len(text):
        parser.fail("Parsing terminated before end of input.")
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def fail(self, message: str) -> None:
        begin = max(self.i - _CONTEXT, 0)
        segment = self.text[begin : self.i + _CONTEXT]
        raise JsonSyntaxError(f"{message}\n{segment}\n{' ' * (self.i - begin)}^")

    def skip_whitespace(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in _WHITESPACE:
            self.i += 1

    def peek(self, expected: str) -> str:
        """The next character after whitespace; at the end, the failure `expected` names."""
        self.skip_whitespace()
        if self.i >= len(self.text):
            self.fail(f"Unexpected end of string. {expected}")
        return self.text[self.i]

    def value(self, depth: int, expected: str) -> object:
        c = self.peek(expected)
        if c == "{":
            return self.object(depth + 1)
        if c == "[":
            return self.array(depth + 1)
        if c in "\"'":
            return self.string()
        if c == "-" or "0" <= c <= "9":
            return self.number()
        for word, meaning in _KEYWORDS:
            if self.text.startswith(word, self.i):
                self.i += len(word)
                return meaning
        if c in "{}[]:," or _is_letter(c):
            self.fail("Unexpected token.")
        self.fail(expected)
        raise AssertionError("unreachable")

    def _enter(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail("Message too deep. Max recursion depth reached.")

    def object(self, depth: int) -> dict[str, object]:
        self._enter(depth)
        self.i += 1  # '{'
        out: dict[str, object] = {}
        while True:
            c = self.peek("Expected an object key or }.")
            if c == "}":  # also after a comma: a trailing comma is accepted
                self.i += 1
                return out
            if c in "\"'":
                key = self.string()
            elif _is_letter(c):
                key = self.bare_key()
            else:
                self.fail("Expected an object key or }.")
            if self.peek("Expected : between key:value pair.") != ":":
                self.fail("Expected : between key:value pair.")
            self.i += 1
            out[key] = self.value(depth, "Expected a value.")
            c = self.peek("Expected , or } after key:value pair.")
            self.i += 1
            if c == "}":
                return out
            if c != ",":
                self.i -= 1
                self.fail("Expected , or } after key:value pair.")

    def bare_key(self) -> str:
        start = self.i
        self.i += 1
        while self.i < len(self.text) and _is_alphanumeric(self.text[self.i]):
            self.i += 1
        key = self.text[start : self.i]
        if key in ("true", "false", "null"):
            self.fail("Expected an object key or }.")
        return key

    def array(self, depth: int) -> list[object]:
        self._enter(depth)
        self.i += 1  # '['
        out: list[object] = []
        while True:
            if self.peek("Expected a value or ] within an array.") == "]":
                self.i += 1  # also after a comma: a trailing comma is accepted
                return out
            out.append(self.value(depth, "Expected a value or ] within an array."))
            c = self.peek("Expected , or ] after array value.")
            self.i += 1
            if c == "]":
                return out
            if c != ",":
                self.i -= 1
                self.fail("Expected , or ] after array value.")

    def string(self) -> str:
        text = self.text
        quote = text[self.i]
        self.i += 1
        parts: list[str] = []
        while self.i < len(text):
            c = text[self.i]
            if c == quote:
                self.i += 1
                return "".join(parts)
            if c != "\\":
                parts.append(c)
                self.i += 1
                continue
            if self.i + 1 >= len(text):
                break
            escaped = text[self.i + 1]
            if escaped == "u":
                parts.append(self.unicode_escape())
            else:
                parts.append(_ESCAPES.get(escaped, escaped))
                self.i += 2
        self.fail("Closing quote expected in string.")
        raise AssertionError("unreachable")

    def _hex4(self, at: int) -> int:
        digits = self.text[at : at + 4]
        if len(digits) < 4:
            self.fail("Illegal hex string.")
        if not all(d in _HEX for d in digits):
            self.fail("Invalid escape sequence.")
        return int(digits, 16)

    def unicode_escape(self) -> str:
        """`\\uXXXX` at self.i, or a surrogate pair of two of them."""
        code = self._hex4(self.i + 2)
        length = 6
        if 0xD800 <= code <= 0xDBFF:
            if self.text[self.i + 6 : self.i + 8] != "\\u":
                self.fail("Missing low surrogate.")
            low = self._hex4(self.i + 8)
            if not 0xDC00 <= low <= 0xDFFF:
                self.fail("Invalid low surrogate.")
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            length = 12
        elif 0xDC00 <= code <= 0xDFFF:
            self.fail("Invalid unicode code point.")
        self.i += length
        return chr(code)

    def number(self) -> int | float:
        start = self.i
        while self.i < len(self.text) and self.text[self.i] in _NUMBER_CHARS:
            self.i += 1
        span = self.text[start : self.i]
        self.i = start  # failures point at the number's start, as the real parser's do
        if any(c in span for c in ".eE"):
            try:
                number: int | float = float(span)
            except ValueError:
                self.fail("Unable to parse number.")
            if not math.isfinite(number):
                self.fail("Number exceeds the range of double.")
        else:
            digits = span[1:] if span.startswith("-") else span
            if len(digits) >= 2 and digits[0] == "0":
                self.fail("Octal/hex numbers are not valid JSON values.")
            if not digits.isdigit():
                self.fail("Unable to parse number.")
            number = int(span)
            if not -(2**63) <= number < 2**64:
                try:  # what does not fit 64 bits is read as a double, as the real parser does
                    number = float(number)
                except OverflowError:
                    self.fail("Number exceeds the range of double.")
        self.i = start + len(span)
        return number
