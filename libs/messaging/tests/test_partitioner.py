"""`kafka.murmur2` and `kafka.key_partition`: the Java client's key hashing, pure."""

from __future__ import annotations

import pytest

from tickertap.messaging.kafka import key_partition, murmur2

# Apache Kafka's own cases for Utils.murmur2 (UtilsTest.testMurmur2), signed as Java has them
JAVA_CASES = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "java"), JAVA_CASES)
def test_murmur2_is_the_java_clients(key: bytes, java: int) -> None:
    assert murmur2(key) == java & 0xFFFFFFFF


def test_a_keys_partition_is_its_positive_hash_modulo_the_count() -> None:
    assert key_partition(b"21", 6) == (-973932308 & 0x7FFFFFFF) % 6
    assert key_partition(b"abc", 1) == 0
    assert {key_partition(str(n).encode(), 6) for n in range(100)} == set(range(6))
    with pytest.raises(ValueError, match="at least one partition"):
        key_partition(b"abc", 0)
