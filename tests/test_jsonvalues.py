"""`producers.job.jsonvalues`: what JSON carries faithfully, and reading JSON that one hostile value
would otherwise make unreadable as a whole."""

from __future__ import annotations

import math

import pytest

from producers.job.jsonvalues import MAX_NUMBER, TOO_DEEP, TOO_LARGE, loads, problems


def test_loads_reads_a_number_too_long_for_python_as_one_past_the_bound():
    value = loads('{"ok": 1, "n": ' + "9" * 5000 + ', "m": -' + "9" * 5000 + "}")
    assert value == {"ok": 1, "n": MAX_NUMBER + 1, "m": -(MAX_NUMBER + 1)}
    assert [(p.field, p.rule) for p in problems(value)] == [("n", TOO_LARGE), ("m", TOO_LARGE)]


def test_loads_cuts_what_the_parser_cannot_nest_and_keeps_the_rest():
    deep = "[" * 3000 + "]" * 3000
    value = loads('{"batch": [{"a": 1}, {"d": ' + deep + '}, {"s": "[[{\\"]"}]}')
    assert value["batch"][0] == {"a": 1} and value["batch"][2] == {"s": '[[{"]'}
    assert [(p.field, p.rule) for p in problems(value)] == [("batch[1].d" + "[0]" * 13, TOO_DEEP)]


@pytest.mark.parametrize("text", ["[" * 5000, "[" * 5000 + "]" * 4000, "{not json", b"\xff\xfe\x00"])
def test_loads_raises_value_error_for_what_is_not_json(text: str | bytes):
    with pytest.raises(ValueError):
        loads(text)


def test_loads_reads_nan_and_infinity_for_problems_to_refuse_by_path():
    value = loads('{"a": NaN, "b": [Infinity, 1e400]}')
    assert math.isnan(value["a"]) and [p.field for p in problems(value)] == ["a", "b[0]", "b[1]"]


def test_problems_stops_after_twenty():
    assert len(problems([math.nan] * 1000)) == 20
