"""``parse_body`` reads with orjson where it can and with the json module
where orjson would differ: either way a body gets exactly what the json
module makes of it, or the same refusal; and text no database stores (a NUL
character, a lone surrogate) is mended, wherever it is."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.app import parse_body
from engine.jsonio import holds_unstorable, may_hold_unstorable, storable

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

#: text with what no database stores (NUL, lone surrogates, a pair split in two)
awkward = st.text(st.sampled_from("a\x00\ud800\udbff\udc00\udfffé\U0001f338"), max_size=6)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text() | awkward)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | awkward, inner, max_size=4), max_leaves=20)


def same(a, b) -> bool:
    """Equal, NaN included, and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@given(values, st.booleans())
def test_any_json_value_reads_as_the_json_module_reads_it(value, ascii_only):
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        expected = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:  # a lone surrogate, written raw: not UTF-8, refused
        try:
            parse_body(body)
        except ValueError as exc:
            assert "not UTF-8" in str(exc)
        else:
            raise AssertionError("a body that is not UTF-8 was read")
        return
    got = parse_body(body)
    assert same(got, storable(expected))
    assert not holds_unstorable(got)
    # The quick search of the raw body misses nothing the walk would mend.
    assert may_hold_unstorable(body) or not holds_unstorable(expected)


def test_nul_characters_are_dropped_and_lone_surrogates_replaced_in_keys_and_values():
    body = b'{"na\\u0000me": "Ja\\u0000na", "lines": [{"title": "\\ud800caf\\uDFFF\\u00e9"}], ' \
           b'"emoji": "\\ud83c\\udf38", "kept": "\\\\u0000"}'
    assert parse_body(body) == {"name": "Jana", "lines": [{"title": "\ufffdcaf\ufffd\u00e9"}],
                                "emoji": "\U0001f338", "kept": "\\u0000"}


@given(st.binary(max_size=64) | st.text(alphabet='{}[]",:0123456789.eE-+ tfnrual\\', max_size=40).map(str.encode))
def test_any_bytes_are_read_or_refused_as_the_json_module_does(body):
    try:
        expected = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        expected = ValueError
    try:
        got = parse_body(body)
    except ValueError:
        got = ValueError
    if expected is ValueError or got is ValueError:
        assert got is expected, (body, got, expected)
    else:
        assert same(got, storable(expected))
