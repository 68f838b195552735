"""Repeated fields are checked in one sweep; a failing item is still named by its path."""

from __future__ import annotations

import pytest
from recstack.common.v1 import field_rules_pb2, value_pb2
from recstack.serving.v1 import serving_service_pb2 as pb

from shared.errors import InvalidArgument
from shared.request_validation import MAX_STRING_CHARS, _sweep, validate

REFS = [f"view:f{i:02d}" for i in range(20)]


def _read(features=REFS, keys=None):
    keys = [value_pb2.Value(int64_value=7)] if keys is None else keys
    return pb.GetOnlineFeaturesRequest(project="p", features=features, entity_keys=keys)


def _rejected(request) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate(request)
    return caught.value


def test_a_valid_request_passes():
    validate(_read())
    validate(_read(keys=[value_pb2.Value(string_value="u1"), value_pb2.Value(int64_value=2)]))


@pytest.mark.parametrize(
    ("bad", "words"),
    [("view:f\x00", "NUL"), ("v:" + "x" * MAX_STRING_CHARS, f"at most {MAX_STRING_CHARS}")],
)
def test_the_first_bad_string_of_a_list_is_named(bad, words):
    error = _rejected(_read(features=[*REFS[:3], bad, REFS[4], bad]))
    assert error.field == "features[3]"
    assert words in error.description


def test_a_text_value_among_keys_is_checked_item_by_item():
    keys = [value_pb2.Value(int64_value=1), value_pb2.Value(string_value="a\x00b")]
    error = _rejected(_read(keys=keys))
    assert error.field == "entity_keys[1].string_value"


def test_a_pattern_rule_holds_for_every_item_of_a_sweep():
    """No repeated field of the contract has a pattern yet; the sweep honours one anyway, as
    the item-by-item check does (empty strings are left to `required` checks)."""
    field = pb.GetOnlineFeaturesRequest.DESCRIPTOR.fields_by_name["features"]
    all_pass = _sweep(field, field_rules_pb2.FieldRules(pattern="[a-z]+:[a-z0-9]+"))
    assert all_pass(["view:f1", "", "other:x"])
    assert not all_pass(["view:f1", "View:f2"])
    assert not all_pass(["view:f1", "view:f2 "])
