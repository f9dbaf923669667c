"""Identifiers as Kubernetes and the kernel make them: UIDs, pod-template hashes, MACs, ids.

All of them come from a seeded numpy Generator, so a seed gives the same names every run.
"""

from __future__ import annotations

import ipaddress

import numpy as np

# Kubernetes' SafeEncodeString alphabet (no vowels, no confusable digits): pod-template hashes
# and random pod-name suffixes are drawn from it.
SAFE = "bcdfghjklmnpqrstvwxz2456789"

BACKEND_NAMES = (
    "catalog", "cart", "checkout", "payments", "users", "search", "reviews", "shipping",
    "inventory", "recommendations", "auth", "notifications", "pricing", "media", "orders", "ads",
)


def backend_name(i: int) -> str:
    return BACKEND_NAMES[i] if i < len(BACKEND_NAMES) else f"svc-{i:03d}"


def safe(rng: np.random.Generator, n: int) -> str:
    return "".join(SAFE[i] for i in rng.integers(0, len(SAFE), n))


def uid(rng: np.random.Generator) -> str:
    h = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16, dtype=np.uint8))
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def hex_id(rng: np.random.Generator, chars: int) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, (chars + 1) // 2, dtype=np.uint8))[:chars]


def mac(rng: np.random.Generator, prefix: int = 0x02) -> str:
    b = [prefix] + [int(x) for x in rng.integers(0, 256, 5)]
    return ":".join(f"{x:02x}" for x in b)


def ip_add(base: str, offset: int) -> str:
    return str(ipaddress.ip_address(base) + offset)
