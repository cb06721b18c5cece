"""Query values that are not what the schema says are a 422, never a 500."""

from __future__ import annotations

import pytest

from tundra.panel.api.endpoint import ApiError, _coerce

INTEGER = {"type": "integer", "minimum": -(10**18), "maximum": 10**18}


@pytest.mark.parametrize("raw", ["--5", "-", "", "5-", "1e3", " 5", "５", "0x10", "1" * 19, "+5"])
def test_malformed_integers_are_refused_as_invalid_input(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        _coerce(raw, INTEGER, "query.limit")
    assert caught.value.status == 422


@pytest.mark.parametrize(("raw", "value"), [("5", 5), ("-5", -5), ("0", 0)])
def test_well_formed_integers_are_accepted(raw: str, value: int) -> None:
    assert _coerce(raw, INTEGER, "query.limit") == value
