from __future__ import annotations

import pytest

from exporters.ratelimit import client_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::abcd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, "unknown"),
        ("", "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_clients_are_keyed_by_address_or_ipv6_network(address: str | None, key: str) -> None:
    assert client_key(address) == key
