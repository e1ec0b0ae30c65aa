"""The probe of the local stack's readiness that tells whether the group coordinator loaded its groups: one
group id on each partition of ``__consumer_offsets``, placed as the broker places group ids."""

from __future__ import annotations

import pytest

from crmflow.stack.local import _group_per_partition, java_hash


@pytest.mark.parametrize(("text", "expected"), [
    ("", 0), ("a", 97), ("hello", 99162322), ("polygenelubricants", -(1 << 31)),  # what Java gives
])
def test_java_hash_is_javas_string_hashcode(text: str, expected: int) -> None:
    assert java_hash(text) == expected


@pytest.mark.parametrize("partitions", [1, 8, 50])
def test_one_probe_group_lands_on_each_partition(partitions: int) -> None:
    probes = _group_per_partition(partitions)
    assert len(probes) == len(set(probes)) == partitions
    assert [abs(java_hash(g)) % partitions for g in probes] == list(range(partitions))
