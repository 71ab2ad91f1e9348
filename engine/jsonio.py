"""JSON read and written with orjson where it gives exactly what the json
module gives, and with the json module elsewhere.

orjson reads an 8 KiB order about five times as fast as the json module and
writes a document about ten times as fast. Where the two would differ, the
json module does the work:

- reading: orjson turns an integer beyond 64 bits into a float (the json
  module keeps it exact), and refuses ``NaN``, ``Infinity`` and lone
  surrogates, which the json module takes;
- writing: orjson refuses an integer beyond 64 bits and any type it does not
  know (a ``Decimal``: the json module refuses it too, with its own error).

One difference is left: orjson writes a float NaN or infinity as ``null``,
where the json module writes ``NaN`` (which is not JSON, and which
PostgreSQL refuses). The engine writes none.

``engine.db.make_engine`` gives these to SQLAlchemy for every JSON column;
``engine.app.parse_body`` reads deliveries with ``read_fast`` (and says
itself what is wrong with a body it leaves to the json module).

JSON can carry text that no database column holds: a NUL character
(``\\u0000``: PostgreSQL refuses it in text and in ``jsonb``) and a lone
surrogate (``\\ud800``: not encodable in UTF-8, so neither SQLite nor
PostgreSQL takes it). ``unstorable`` finds it; ``storable`` mends it in a
parsed document.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Each digit as "0", "-" as itself, anything else as " ": a text so mapped
# holds "0" * 20 or "-" + "0" * 19 where it may hold an integer beyond 64 bits
# (C-speed searches: a regular expression takes ~25 times as long here).
_DIGITS = bytes(48 if 48 <= byte <= 57 else byte if byte == 45 else 32 for byte in range(256))
_BEYOND_64_BITS = (b"0" * 20, b"-" + b"0" * 19)
_OPTIONS = orjson.OPT_NON_STR_KEYS


def long_number(data: bytes) -> bool:
    """Whether ``data`` may hold an integer beyond 64 bits (20 digits in a
    row, or a minus and 19)."""
    digits = data.translate(_DIGITS)
    return any(run in digits for run in _BEYOND_64_BITS)


#: a NUL character or a lone surrogate: text no database stores
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(text: str) -> bool:
    """Whether ``text`` holds a NUL character or a lone surrogate."""
    return _UNSTORABLE.search(text) is not None


def holds_unstorable(value: Any) -> bool:
    """Whether a parsed JSON ``value`` holds an ``unstorable`` string (keys
    included)."""
    if isinstance(value, str):
        return unstorable(value)
    if isinstance(value, dict):
        return any(holds_unstorable(key) or holds_unstorable(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(holds_unstorable(item) for item in value)
    return False


#: why a request with such text is refused (the API, a till's batch)
UNSTORABLE_REFUSAL = "text may not contain NUL characters or lone surrogates"


def may_hold_unstorable(raw: bytes) -> bool:
    """Whether JSON text ``raw`` may hold a string that is ``unstorable``. A
    NUL or a lone surrogate can be in JSON only escaped (raw, a NUL is
    refused and a lone surrogate is not UTF-8): ``\\u0000`` or ``\\uD...``,
    in either case. One C-speed search for a backslash (most bodies have
    none), then a look at each ``\\u`` escape; a surrogate pair or a Hangul
    syllable, written escaped, says yes too (the walk then mends nothing)."""
    if raw.find(b"\\") == -1:  # (memchr for one byte: 30 times as fast as a search for two)
        return False
    at = raw.find(b"\\u")
    while at != -1:
        code = raw[at + 2:at + 6]
        if code == b"0000" or code[:1] in (b"d", b"D"):
            return True
        at = raw.find(b"\\u", at + 2)
    return False


def storable(value: Any) -> Any:
    """A parsed JSON ``value`` with every string in it, keys included, fit for
    a database: NUL characters dropped, a lone surrogate replaced by U+FFFD
    (the replacement character, as a UTF-8 decoder writes for a bad byte)."""
    if isinstance(value, str):
        if not unstorable(value):
            return value
        return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value


#: what ``read_fast`` gives for a text it leaves to the json module
UNREAD = object()


def read_fast(raw: bytes) -> Any:
    """What orjson reads in ``raw`` where that is what the json module would
    read, else ``UNREAD`` (an integer beyond 64 bits may be in it, or orjson
    refuses it)."""
    if long_number(raw):
        return UNREAD
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return UNREAD


def loads(data: bytes | str) -> Any:
    """What ``json.loads`` makes of ``data``, or its error."""
    found = read_fast(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return json.loads(data) if found is UNREAD else found


def dumps(value: Any) -> str:
    """``value`` as JSON text that ``json.loads`` reads back as
    ``json.loads(json.dumps(value))`` does (the separators and the escaping
    of non-ASCII characters differ from the json module's, not the value)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:  # (orjson.JSONEncodeError is one) a type or an integer orjson can't write
        return json.dumps(value)
