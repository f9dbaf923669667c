"""Addresses as the kernel's records hold them (16 bytes, an IPv4 address in the first 4) to text.

Here, not in capture/live, because the decoders that turn ring records into rows (dns_columns)
name addresses too, and capture.decode never imports capture.live."""

from __future__ import annotations

import ipaddress


def ip_text(family: int, raw: bytes) -> str:
    """Canonical text of an address held in the 16-byte form (v4 in the first 4 bytes)."""
    if family in (4, 2):
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return str(ipaddress.IPv6Address(bytes(raw[:16])))


class IpText:
    """ip_text with a bounded cache: events repeat the same few addresses."""

    def __init__(self, limit: int = 100_000):
        self._cache: dict[tuple[int, bytes], str] = {}
        self._limit = limit

    def __call__(self, family: int, raw: bytes) -> str:
        k = (family, raw)
        text = self._cache.get(k)
        if text is None:
            if len(self._cache) > self._limit:
                self._cache.clear()
            text = self._cache[k] = ip_text(family, raw)
        return text
