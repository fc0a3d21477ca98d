"""Fold the many spellings of one device's name into one host key."""

from __future__ import annotations

import ipaddress


def normalise_host(name: str, strip_domain: bool = True) -> str:
    """Return the key under which ``name``'s events are counted.

    Names compare case-insensitively and a trailing dot is ignored. With ``strip_domain``,
    ``host-a.example.net`` and ``host-a`` are one host. IP addresses are kept whole, because
    ``10.0.0.1`` has no domain to strip. Returns an empty string for a blank name.
    """
    host = name.strip().rstrip(".").lower()
    if not host or not strip_domain:
        return host
    if _is_ip_address(host):
        return host
    return host.split(".", 1)[0]


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class HostNormaliser:
    """``normalise_host`` with a cache, since a stream repeats the same few names."""

    def __init__(self, strip_domain: bool = True) -> None:
        self.strip_domain = strip_domain
        self._cache: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        host = self._cache.get(name)
        if host is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            host = normalise_host(name, self.strip_domain)
            self._cache[name] = host
        return host
