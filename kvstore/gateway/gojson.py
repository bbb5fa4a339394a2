"""Go's ``encoding/json`` where etcd's gateway shows it: its syntax errors, quoting and base64.

etcd's gateway decodes request bodies with Go's ``encoding/json`` and answers
bad input with that library's error text (``invalid character 'x' looking for
beginning of value``, ``unexpected EOF``, ``illegal base64 data at input byte
4``, ``json: cannot unmarshal string into Go value of type int64``). Python's
``json`` module parses the well-formed bodies (fast, in C); this module
reproduces Go's answer where the two differ: the scanner below is the state
machine of Go's ``scanner.go`` (same states, same messages), run on the error
path and to find where one JSON value of a request stream ends.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable
from typing import Any

MAX_NESTING_DEPTH = 10_000
"""Go's limit on nested objects and arrays."""

_SPACE = frozenset(b" \t\r\n")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")


class GoJSONError(ValueError):
    """What Go's encoding/json says about the input (its error text, exactly)."""


# ----- values as decoded here: Python's json with Go's number literals kept


class Number(str):
    """A JSON number, kept as its literal text (Go reports ``number 1.5``, not ``1.5`` parsed)."""

    __slots__ = ()


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; Go's does not: send the input to the Go scanner.
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_int=Number, parse_float=Number, parse_constant=_no_constant)


def kind_of(value: object) -> str:
    """The word Go's UnmarshalTypeError uses for a JSON value."""
    if isinstance(value, Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def type_error(value: object, go_type: str) -> GoJSONError:
    return GoJSONError(f"json: cannot unmarshal {kind_of(value)} into Go value of type {go_type}")


# ----- Go's scanner (encoding/json/scanner.go)

# What a step tells its caller (Go's scan* constants that matter here).
_CONTINUE, _END_VALUE, _SKIP_SPACE, _END = 0, 1, 2, 3
# Where the scanner is inside a container.
_OBJECT_KEY, _OBJECT_VALUE, _ARRAY_VALUE = 0, 1, 2


def _quote_char(c: int) -> str:
    """Go's quoteChar: a byte as its error messages show it."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    return "'" + strconv_quote(chr(c))[1:-1] + "'"


class Scanner:
    """Go's JSON scanner: fed one byte at a time, it knows when a value ends or goes wrong."""

    __slots__ = ("end_top", "error", "parse_state", "step")

    def __init__(self) -> None:
        self.step: Callable[[int], int] = self._begin_value
        self.parse_state: list[int] = []
        self.end_top = False
        self.error: str | None = None

    def _fail(self, c: int, context: str) -> int:
        self.step = self._stay_failed
        self.error = f"invalid character {_quote_char(c)} {context}"
        raise GoJSONError(self.error)

    def _stay_failed(self, c: int) -> int:
        assert self.error is not None
        raise GoJSONError(self.error)

    def _push(self, state: int) -> None:
        self.parse_state.append(state)
        if len(self.parse_state) > MAX_NESTING_DEPTH:
            self.error = "exceeded max depth"
            self.step = self._stay_failed
            raise GoJSONError(self.error)

    def _begin_value_or_empty(self, c: int) -> int:
        if c in _SPACE:
            return _SKIP_SPACE
        if c == ord("]"):
            return self._end_value(c)
        return self._begin_value(c)

    def _begin_value(self, c: int) -> int:
        if c in _SPACE:
            return _SKIP_SPACE
        if c == ord("{"):
            self.step = self._begin_string_or_empty
            self._push(_OBJECT_KEY)
            return _CONTINUE
        if c == ord("["):
            self.step = self._begin_value_or_empty
            self._push(_ARRAY_VALUE)
            return _CONTINUE
        if c == ord('"'):
            self.step = self._in_string
        elif c == ord("-"):
            self.step = self._neg
        elif c == ord("0"):
            self.step = self._zero
        elif c == ord("t"):
            self.step = self._literal("rue", "true")
        elif c == ord("f"):
            self.step = self._literal("alse", "false")
        elif c == ord("n"):
            self.step = self._literal("ull", "null")
        elif ord("1") <= c <= ord("9"):
            self.step = self._digits
        else:
            return self._fail(c, "looking for beginning of value")
        return _CONTINUE

    def _begin_string_or_empty(self, c: int) -> int:
        if c in _SPACE:
            return _SKIP_SPACE
        if c == ord("}"):
            self.parse_state[-1] = _OBJECT_VALUE
            return self._end_value(c)
        return self._begin_string(c)

    def _begin_string(self, c: int) -> int:
        if c in _SPACE:
            return _SKIP_SPACE
        if c == ord('"'):
            self.step = self._in_string
            return _CONTINUE
        return self._fail(c, "looking for beginning of object key string")

    def _end_value(self, c: int) -> int:
        if not self.parse_state:
            self.step = self._end_top_step
            self.end_top = True
            return self._end_top_step(c)
        if c in _SPACE:
            self.step = self._end_value
            return _SKIP_SPACE
        state = self.parse_state[-1]
        if state == _OBJECT_KEY:
            if c == ord(":"):
                self.parse_state[-1] = _OBJECT_VALUE
                self.step = self._begin_value
                return _CONTINUE
            return self._fail(c, "after object key")
        if state == _OBJECT_VALUE:
            if c == ord(","):
                self.parse_state[-1] = _OBJECT_KEY
                self.step = self._begin_string
                return _CONTINUE
            if c == ord("}"):
                return self._pop()
            return self._fail(c, "after object key:value pair")
        if c == ord(","):
            self.step = self._begin_value
            return _CONTINUE
        if c == ord("]"):
            return self._pop()
        return self._fail(c, "after array element")

    def _pop(self) -> int:
        self.parse_state.pop()
        if not self.parse_state:
            self.step = self._end_top_step
            self.end_top = True
        else:
            self.step = self._end_value
        return _END_VALUE

    def _end_top_step(self, c: int) -> int:
        if c not in _SPACE:
            # Go records the error but still reports the end of the value before this byte.
            self.error = f"invalid character {_quote_char(c)} after top-level value"
        return _END

    def _in_string(self, c: int) -> int:
        if c == ord('"'):
            self.step = self._end_value
            return _CONTINUE
        if c == ord("\\"):
            self.step = self._in_string_escape
            return _CONTINUE
        if c < 0x20:
            return self._fail(c, "in string literal")
        return _CONTINUE

    def _in_string_escape(self, c: int) -> int:
        if c in b'bfnrt\\/"':
            self.step = self._in_string
            return _CONTINUE
        if c == ord("u"):
            self.step = self._hex_escape(4)
            return _CONTINUE
        return self._fail(c, "in string escape code")

    def _hex_escape(self, left: int) -> Callable[[int], int]:
        def step(c: int) -> int:
            if c not in _HEX:
                return self._fail(c, "in \\u hexadecimal character escape")
            self.step = self._in_string if left == 1 else self._hex_escape(left - 1)
            return _CONTINUE

        return step

    def _neg(self, c: int) -> int:
        if c == ord("0"):
            self.step = self._zero
            return _CONTINUE
        if ord("1") <= c <= ord("9"):
            self.step = self._digits
            return _CONTINUE
        return self._fail(c, "in numeric literal")

    def _digits(self, c: int) -> int:
        if c in _DIGITS:
            return _CONTINUE
        return self._zero(c)

    def _zero(self, c: int) -> int:
        if c == ord("."):
            self.step = self._dot
            return _CONTINUE
        if c in b"eE":
            self.step = self._exponent
            return _CONTINUE
        return self._end_value(c)

    def _dot(self, c: int) -> int:
        if c in _DIGITS:
            self.step = self._fraction
            return _CONTINUE
        return self._fail(c, "after decimal point in numeric literal")

    def _fraction(self, c: int) -> int:
        if c in _DIGITS:
            return _CONTINUE
        if c in b"eE":
            self.step = self._exponent
            return _CONTINUE
        return self._end_value(c)

    def _exponent(self, c: int) -> int:
        if c in b"+-":
            self.step = self._exponent_sign
            return _CONTINUE
        return self._exponent_sign(c)

    def _exponent_sign(self, c: int) -> int:
        if c in _DIGITS:
            self.step = self._exponent_digits
            return _CONTINUE
        return self._fail(c, "in exponent of numeric literal")

    def _exponent_digits(self, c: int) -> int:
        if c in _DIGITS:
            return _CONTINUE
        return self._end_value(c)

    def _literal(self, rest: str, word: str) -> Callable[[int], int]:
        """The steps of ``true``/``false``/``null`` after their first letter."""

        def step(c: int) -> int:
            if c != ord(rest[0]):
                return self._fail(c, f"in literal {word} (expecting {_quote_char(ord(rest[0]))})")
            self.step = self._end_value if len(rest) == 1 else self._literal(rest[1:], word)
            return _CONTINUE

        return step


class ValueSplitter:
    """Where successive JSON values of a byte stream end, as Go's json.Decoder reads them.

    Fed a growing buffer, it scans only the bytes it has not seen; once a value
    is taken off the front of the buffer, :meth:`reset`.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scanner = Scanner()
        self._scanned = 0

    def end(self, data: bytes | bytearray, at_eof: bool) -> int | None:
        """The end of the value at the start of ``data``.

        None: not complete yet (``at_eof`` False), or no value, only space
        (``at_eof`` True: the stream ended cleanly). Raises :class:`GoJSONError`
        with Go's message on a syntax error, or ``unexpected EOF`` when the
        stream ends inside a value.
        """
        scanner = self._scanner
        for i in range(self._scanned, len(data)):
            result = scanner.step(data[i])
            if result == _END:
                return i
            if result == _END_VALUE and scanner.end_top:
                return i + 1
        self._scanned = len(data)
        if not at_eof:
            return None
        try:
            if scanner.step(ord(" ")) == _END:
                return len(data)
        except GoJSONError:
            pass  # Go's Decoder calls any value cut short an unexpected EOF
        if any(c not in _SPACE for c in data):
            raise GoJSONError("unexpected EOF")
        return None


def check_valid(data: bytes) -> None:
    """Go's checkValid (what json.Unmarshal does first): the whole input is one JSON value."""
    scanner = Scanner()
    for c in data:
        scanner.step(c)
        if scanner.error is not None:
            raise GoJSONError(scanner.error)
    if scanner.end_top:
        return
    scanner.step(ord(" "))
    if scanner.end_top:
        return
    raise GoJSONError("unexpected end of JSON input")


def decode_first(body: bytes) -> tuple[bool, object]:
    """The first JSON value of ``body`` as Go's json.Decoder reads it: (found, value).

    (False, None) for a body of only space (Go's io.EOF, which the gateway
    takes as an empty request). Raises :class:`GoJSONError` with Go's message.
    """
    start = 0
    while start < len(body) and body[start] in _SPACE:
        start += 1
    if start == len(body):
        return False, None
    if body[start] == ord("{"):
        try:
            value, _ = _DECODER.raw_decode(body.decode(), start)
        except ValueError:
            pass  # Go's scanner below says what Go says
        else:
            return True, value
    end = ValueSplitter().end(body[start:], at_eof=True)
    assert end is not None
    return True, loads(body[start : start + end])


def loads(data: bytes) -> object:
    """A value the Go scanner accepted (invalid UTF-8 in strings becomes U+FFFD, as in Go)."""
    return _DECODER.decode(data.decode("utf-8", "replace"))


def unmarshal(data: bytes) -> object:
    """Go's json.Unmarshal front half: check the whole input, then decode it."""
    check_valid(data)
    return loads(data)


# ----- literals into Go types (encoding/json's literalStore)

_INT_LITERAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 255),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "protoreflect.EnumNumber": (-(2**31), 2**31 - 1),
}


def to_int(value: object, go_type: str) -> int:
    """A decoded JSON value stored into a Go integer type, with Go's errors."""
    if isinstance(value, Number):
        if go_type.startswith("uint") and value.startswith("-"):
            raise GoJSONError(
                f"json: cannot unmarshal number {value} into Go value of type {go_type}"
            )
        low, high = _INT_RANGES[go_type]
        if _INT_LITERAL.fullmatch(value) and len(value) < 22 and low <= int(value) <= high:
            return int(value)
        raise GoJSONError(f"json: cannot unmarshal number {value} into Go value of type {go_type}")
    if value is None:
        return 0
    raise type_error(value, go_type)


def to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    raise type_error(value, "bool")


def to_string(value: object) -> str:
    if isinstance(value, str) and not isinstance(value, Number):
        if _SURROGATE.search(value):
            # A lone surrogate (from a \u escape) is U+FFFD once Go decodes it.
            return _SURROGATE.sub("\ufffd", value)
        return value
    if value is None:
        return ""
    raise type_error(value, "string")


_SURROGATE = re.compile("[\ud800-\udfff]")


def to_bytes(value: object) -> bytes:
    """A JSON string as Go's []byte (standard base64), or an array of byte values."""
    if isinstance(value, str) and not isinstance(value, Number):
        return b64decode(value)
    if isinstance(value, list):
        return bytes(to_int(item, "uint8") for item in value)
    if value is None:
        return b""
    raise type_error(value, "[]uint8")


# ----- base64 as Go's base64.StdEncoding decodes it

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_NEWLINES = frozenset(b"\r\n")


def b64decode(text: str) -> bytes:
    """Standard base64 with padding; errors name the byte offset as Go does."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    return _b64decode_go(text.encode("utf-8", "replace"))


def _b64decode_go(src: bytes) -> bytes:
    """Go's Encoding.Decode quantum by quantum (it skips CR and LF, wants padding)."""
    out = bytearray()
    si = 0
    while si < len(src):
        quantum: list[int] = []
        error_at: int | None = None
        while len(quantum) < 4:
            if si == len(src):
                if not quantum:
                    return bytes(out)
                raise GoJSONError(f"illegal base64 data at input byte {si - len(quantum)}")
            c = src[si]
            si += 1
            if c in _B64_ALPHABET:
                quantum.append(c)
                continue
            if c in _NEWLINES:
                continue
            if c != ord("="):
                raise GoJSONError(f"illegal base64 data at input byte {si - 1}")
            if len(quantum) < 2:
                raise GoJSONError(f"illegal base64 data at input byte {si - 1}")
            if len(quantum) == 2:  # "==" expected: the first one is read
                while si < len(src) and src[si] in _NEWLINES:
                    si += 1
                if si == len(src):
                    raise GoJSONError(f"illegal base64 data at input byte {len(src)}")
                if src[si] != ord("="):
                    raise GoJSONError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < len(src) and src[si] in _NEWLINES:
                si += 1
            if si < len(src):
                error_at = si  # trailing garbage after the padding
            break
        padded = bytes(quantum) + b"A" * (4 - len(quantum))
        out += binascii.a2b_base64(padded)[: len(quantum) - 1 if len(quantum) < 4 else 3]
        if error_at is not None:
            raise GoJSONError(f"illegal base64 data at input byte {error_at}")
        if len(quantum) < 4:
            return bytes(out)
    return bytes(out)


# ----- output


_PLAIN = re.compile(r'[^"\\<>&\x00-\x1f\u2028\u2029]*')
_GO_ESCAPES = {
    "\\b": "\\u0008",
    "\\f": "\\u000c",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPE = re.compile(r"\\\\|\\b|\\f|[<>&\u2028\u2029]")


def quote(text: str) -> str:
    """A string as Go's json.Marshal writes it (HTML-safe escapes, UTF-8 kept)."""
    if _PLAIN.fullmatch(text):
        return '"' + text + '"'
    escaped = json.dumps(text, ensure_ascii=False)
    # Python writes \b and \f; Go 1.16 writes them as \u00XX; Go also escapes <, >, &.
    return _GO_ESCAPE.sub(lambda m: _GO_ESCAPES.get(m.group(), m.group()), escaped)


_STRCONV_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def strconv_quote(text: str) -> str:
    """Go's strconv.Quote (``%q``): printable characters kept, the rest escaped."""
    out = ['"']
    for ch in text:
        if ch in _STRCONV_ESCAPES:
            out.append(_STRCONV_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)
