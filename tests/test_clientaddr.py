"""The client address behind load balancers: believed only through trusted hops."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.clientaddr import Network, client_address

PROXIES: list[Network] = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


class Peer:
    """A transport as aiohttp's request reads it: only the peer's address matters here."""

    def __init__(self, host: str) -> None:
        self.host = host

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.host, 40000) if name == "peername" else default


def address(peer: str, *forwarded: str, proxies: list[Network] = PROXIES) -> str:
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    request = make_mocked_request("POST", "/", headers=headers, transport=Peer(peer))
    return client_address(request, proxies)


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert address("203.0.113.9", "198.51.100.1", proxies=[]) == "203.0.113.9"
    assert address("203.0.113.9", "198.51.100.1") == "203.0.113.9"  # peer is not a proxy


def test_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    assert address("10.0.0.2", "198.51.100.1") == "198.51.100.1"
    assert address("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.1.1.1") == "198.51.100.1"
    assert address("10.0.0.2", "6.6.6.6", "198.51.100.1") == "198.51.100.1"  # two headers
    assert address("fd00::1", "2001:db8::7") == "2001:db8::7"


def test_garbage_in_the_chain_stops_the_walk_at_the_last_hop_believed() -> None:
    assert address("10.0.0.2", "198.51.100.1, not-an-ip") == "10.0.0.2"
    assert address("10.0.0.2", "not-an-ip, 10.3.3.3") == "10.3.3.3"
    assert address("10.0.0.2") == "10.0.0.2"  # a trusted proxy that did not say: itself
