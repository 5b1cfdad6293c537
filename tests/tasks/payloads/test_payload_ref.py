"""PayloadRef: small, frozen, JSON-able, strict."""

from __future__ import annotations

import json

import pydantic
import pytest

from tasks.payloads import PayloadRef, write_payload

CHECKSUM = "xxh3_128:" + "0" * 32


def make(**changes: object) -> PayloadRef:
    fields: dict[str, object] = {
        "uri": "memory://x/a.msgpack",
        "format": "msgpack",
        "kind": "rows",
        "rows": 2,
        "nbytes": 10,
        "checksum": CHECKSUM,
    }
    fields.update(changes)
    return PayloadRef.model_validate(fields)


def test_json_round_trip_gives_an_equal_ref(local_url: str) -> None:
    ref = write_payload([{"q": "a"}], local_url)
    dumped = ref.model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped
    assert PayloadRef.model_validate(dumped) == ref
    assert PayloadRef.model_validate_json(ref.model_dump_json()) == ref
    assert set(dumped) == {
        "uri",
        "format",
        "kind",
        "compression",
        "rows",
        "nbytes",
        "schema_summary",
        "checksum",
        "created_at",
        "inline",
    }


def test_ref_is_frozen_and_rejects_unknown_fields() -> None:
    ref = make()
    with pytest.raises(pydantic.ValidationError):
        ref.rows = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="extra"):
        make(surprise=1)


@pytest.mark.parametrize(
    "changes",
    [{"format": "pickle"}, {"checksum": "md5:abc"}, {"rows": -1}, {"uri": ""}, {"compression": "gzip"}],
)
def test_ref_rejects_bad_values(changes: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        make(**changes)


def test_inline_and_stored_flags() -> None:
    assert make(uri="inline:" + CHECKSUM, inline="AAAA").is_inline
    assert not make(uri="inline:" + CHECKSUM, inline="AAAA").is_stored
    assert make().is_stored and not make().is_inline
