"""Field paths out of msgspec's messages, and statuses for every kind of failure."""

from __future__ import annotations

import msgspec
import pytest

from lmlens.errors import TextTooLongError
from lmlens_http.errors import OverloadedError, body_of, validation_field


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    n: int


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    items: list[Inner] = []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{}", "text"),
        (b'{"text": 1}', "text"),
        (b'{"text": "a", "items": [{"n": 1}, {"n": "x"}]}', "items[1].n"),
        (b'{"text": "a", "items": [{}]}', "items[0].n"),
        (b'{"text": "a", "extra": 1}', "extra"),
        (b'{"text": "a", "items": [{"n": 1, "m": 2}]}', "items[0].m"),
    ],
)
def test_validation_field_paths(data, field) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(data, type=Outer)
    assert validation_field(str(info.value)) == field
    status, body, _ = body_of(info.value)
    assert status == 422 and body.code == "invalid_request" and body.field == field
    assert " - at `" not in body.message


def test_kernel_errors_keep_code_and_status() -> None:
    status, body, headers = body_of(TextTooLongError("too long", field="text"))
    assert (status, body.code, body.field, headers) == (413, "text_too_long", "text", {})


def test_retry_after_header() -> None:
    status, body, headers = body_of(OverloadedError("busy", retry_after=7))
    assert (status, body.code, headers) == (503, "overloaded", {"Retry-After": "7"})


def test_unexpected_errors_are_500_internal(caplog) -> None:
    status, body, _ = body_of(RuntimeError("boom"))
    assert (status, body.code) == (500, "internal_error")
