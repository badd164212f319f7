"""The client address per-address limits count: X-Forwarded-For believed from trusted proxies only."""

from __future__ import annotations

import pytest

from gateway.client_address import ClientAddresses
from gateway.settings import GatewaySettings


def scope(peer: str, *forwarded_for: str) -> dict:
    return {"type": "http", "client": (peer, 50000),
            "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded_for]}


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    addresses = ClientAddresses([])
    assert addresses.of(scope("198.51.100.9", "203.0.113.7")) == "198.51.100.9"


def test_a_peer_outside_the_trusted_networks_cannot_forward() -> None:
    addresses = ClientAddresses(["10.0.0.0/8"])
    assert addresses.of(scope("198.51.100.9", "203.0.113.7")) == "198.51.100.9"


def test_a_trusted_proxy_names_the_client() -> None:
    addresses = ClientAddresses(["10.0.0.0/8"])
    assert addresses.of(scope("10.1.2.3", "203.0.113.7")) == "203.0.113.7"


def test_addresses_a_client_prepends_are_not_believed() -> None:
    """The proxy appends what it saw; whatever the client wrote stands to its left."""
    addresses = ClientAddresses(["10.0.0.0/8"])
    assert addresses.of(scope("10.1.2.3", "1.1.1.1, 2.2.2.2, 203.0.113.7")) == "203.0.113.7"


def test_a_chain_of_trusted_proxies_is_followed_to_the_first_untrusted_hop() -> None:
    addresses = ClientAddresses(["10.0.0.0/8", "fd00::/8"])
    assert addresses.of(scope("10.1.2.3", "6.6.6.6, 203.0.113.7", "10.9.9.9, fd00::1")) == "203.0.113.7"


def test_only_trusted_hops_leave_the_leftmost() -> None:
    addresses = ClientAddresses(["10.0.0.0/8"])
    assert addresses.of(scope("10.1.2.3", "10.0.0.5, 10.0.0.6")) == "10.0.0.5"


def test_garbage_from_a_trusted_proxy_leaves_the_nearest_vouched_address() -> None:
    addresses = ClientAddresses(["10.0.0.0/8"])
    assert addresses.of(scope("10.1.2.3", "not-an-address")) == "10.1.2.3"
    assert addresses.of(scope("10.1.2.3", "203.0.113.7, 10.0.0.9:80")) == "10.1.2.3"


def test_no_header_from_a_trusted_proxy_is_the_proxy_itself() -> None:
    assert ClientAddresses(["10.0.0.0/8"]).of(scope("10.1.2.3")) == "10.1.2.3"


def test_ipv4_mapped_addresses_count_as_ipv4() -> None:
    addresses = ClientAddresses(["10.0.0.0/8"])
    assert addresses.of(scope("10.1.2.3", "::ffff:203.0.113.7")) == "203.0.113.7"


def test_settings_refuse_a_network_that_is_not_cidr() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        GatewaySettings(trusted_proxies=["10.0.0.0/33"])
    assert GatewaySettings(trusted_proxies=["10.0.0.0/8", "fd00::/8"]).trusted_proxies == ["10.0.0.0/8", "fd00::/8"]


def test_settings_refuse_a_limit_that_does_not_parse() -> None:
    with pytest.raises(ValueError, match="failed_login_limit_per_username"):
        GatewaySettings(failed_login_limit_per_username="often")
