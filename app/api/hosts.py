"""The ``Host`` check: a server answers only the names it is meant to be reached by, others get 400.

Why: a web page can point a name of its own at 127.0.0.1 (DNS rebinding) and then talk to a loopback server as
if it were the page's own origin; the one thing it cannot change is the ``Host`` header, which still names the
page's site. So a server bound to loopback answers only loopback names (``localhost``, ``127.0.0.1``, ``::1``,
any port), unless ``allowed_hosts`` says otherwise; elsewhere ``allowed_hosts`` lists the names a deployment
is reached by (``*``: any, e.g. behind an ingress that checks them, or where probes use pod addresses).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response

ANY_HOST = "*"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """Only this machine can connect: ``localhost`` or a loopback address. A host name may resolve to anything,
    so it counts as open."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name a ``Host`` header (or an ``allowed_hosts`` entry) gives, lowercase, without its port or a
    trailing dot: ``[::1]:8000`` -> ``::1``, ``LocalHost:80`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # name:port (an IPv6 address without brackets has more colons)
        host = host.partition(":")[0]
    return host.rstrip(".")


@dataclass(frozen=True, kw_only=True)
class AllowedHosts:
    """The names a server answers; ``names`` None: any."""

    names: frozenset[str] | None

    @classmethod
    def of(cls, configured: list[str] | None, bind_host: str | None) -> AllowedHosts:
        """``configured`` (the setting) when given; else the loopback names for a server bound to loopback, and
        any name for one bound elsewhere or not bound by ``serve`` (an app in a test's process)."""
        if configured is not None:
            return cls(names=None if ANY_HOST in configured else frozenset(host_name(h) for h in configured))
        if bind_host is not None and is_loopback(bind_host):
            return cls(names=LOOPBACK_NAMES)
        return cls(names=None)

    def allows(self, host: str | None) -> bool:
        return self.names is None or (host is not None and host_name(host) in self.names)


class HostCheck:
    """ASGI middleware: a request whose ``Host`` is not allowed gets 400 in the error shape, before any route."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allowed.allows(Headers(scope=scope).get("host")):
            await self.app(scope, receive, send)
            return
        message = "this server does not answer for that Host header; the allowed_hosts setting lists the names it does"
        await error_response(400, message, param="Host", code="host_not_allowed")(scope, receive, send)
