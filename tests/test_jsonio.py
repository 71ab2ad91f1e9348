"""``engine.jsonio`` (the JSON columns' serializer and deserializer) gives
what the json module gives: any value written reads back as the json
module's own text reads back, and any text reads as the json module reads
it, or is refused as it refuses it."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import jsonio
from tests.test_parse_body import same

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

keys = st.text(max_size=8) | st.integers(-(10**3), 10**3) | st.booleans()
finite = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text())
documents = st.recursive(finite, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                         | st.dictionaries(keys, inner, max_size=4), max_leaves=20)


@given(documents)
def test_anything_written_reads_back_as_the_json_modules_text_does(value):
    assert same(json.loads(jsonio.dumps(value)), json.loads(json.dumps(value)))


@given(documents, st.booleans(), st.booleans())
def test_any_text_reads_as_the_json_module_reads_it(value, ascii_only, as_bytes):
    text = json.dumps(value, ensure_ascii=ascii_only)
    data = text.encode("utf-8", "surrogatepass") if as_bytes else text
    try:
        expected = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        with pytest.raises(type(exc)):
            jsonio.loads(data)
        return
    assert same(jsonio.loads(data), expected)


def test_what_orjson_would_get_wrong_goes_to_the_json_module():
    big = 2**70
    assert jsonio.loads(f'{{"id": {big}, "low": -{big}}}') == {"id": big, "low": -big}
    assert json.loads(jsonio.dumps({"id": big})) == {"id": big}
    assert str(jsonio.loads("[NaN]")[0]) == "nan"
    assert jsonio.loads('"\\ud800"') == "\ud800"
    assert json.loads(jsonio.dumps({"a": "\ud800"})) == {"a": "\ud800"}
    assert jsonio.dumps({1: "x"}) == '{"1":"x"}'
    with pytest.raises(TypeError):
        jsonio.dumps({"money": Decimal("1.00")})
    with pytest.raises(json.JSONDecodeError):
        jsonio.loads('{"truncated": ')
