"""Who is calling: the client's IP address, also behind load balancers we were told to trust.

A rate limit per address must count the visitor, not the load balancer every visitor comes
through; it must also not believe an `X-Forwarded-For` that the client wrote itself. So the
header counts only when the direct peer is one of `server.trusted_proxies`, and then it is read
from the right (the hop our proxy added) past every trusted hop: the first address that is not
trusted is the client. Anything left of it is whatever the client claimed, and ignored.

(aiohttp-remotes' X-Forwarded middlewares rewrite every request, the webhooks' hot path too,
and its strict one refuses direct peers that are not proxies; we need the address in one place.)
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import hdrs, web

Network = IPv4Network | IPv6Network


def _trusted(address: IPv4Address | IPv6Address, proxies: Sequence[Network]) -> bool:
    return any(address in network for network in proxies)


def client_address(request: web.Request, trusted_proxies: Sequence[Network]) -> str:
    """The calling client's address (see the module docstring); "unknown" without a peer."""
    peer = request.remote
    if peer is None:
        return "unknown"
    try:
        current = ip_address(peer)
    except ValueError:  # a Unix socket: no address to go by
        return peer
    if not trusted_proxies or not _trusted(current, trusted_proxies):
        return str(current)
    hops = ",".join(request.headers.getall(hdrs.X_FORWARDED_FOR, [])).split(",")
    for hop in reversed(hops):
        try:
            current = ip_address(hop.strip())
        except ValueError:  # garbage from the client's side of the chain: stop believing
            break
        if not _trusted(current, trusted_proxies):
            break
    return str(current)
