"""Data-transfer prices for the traffic report's cost estimate, and how to override them.

Defaults (USD per GB, GB = 10^9 bytes), from AWS's EC2 on-demand pricing page, section "Data
Transfer" (https://aws.amazon.com/ec2/pricing/on-demand/, read 2026): traffic between
Availability Zones in one region is charged $0.01/GB in each direction; between regions
$0.02/GB (most US/EU region pairs, charged on the sending side); to the internet $0.09/GB
(the first 10 TB per month tier). Traffic within a zone is free. Google Cloud and Azure list
similar figures (inter-zone $0.01/GB). Override with a TOML file:

    [prices]          # USD per GB
    cross_zone = 0.01
    cross_region = 0.02
    internet_egress = 0.09
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from ...errors import FlowtapeError


@dataclass(frozen=True)
class Prices:
    cross_zone: float = 0.01  # per GB, each direction
    cross_region: float = 0.02
    internet_egress: float = 0.09
    same_zone: float = 0.0


def load_prices(path: str | Path | None) -> Prices:
    """Prices from a TOML file's [prices] table (missing keys keep their defaults)."""
    if path is None:
        return Prices()
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FlowtapeError(f"{path}: no such price file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FlowtapeError(f"{path}: not valid TOML ({e})") from None
    table = data.get("prices", {})
    known = {f.name for f in fields(Prices)}
    for k, v in table.items():
        if k not in known:
            raise FlowtapeError(f"{path}: unknown price {k!r} (known: {', '.join(sorted(known))})")
        if not isinstance(v, (int, float)) or v < 0:
            raise FlowtapeError(f"{path}: price {k!r} must be a non-negative number of USD per GB")
    return Prices(**{k: float(v) for k, v in table.items()})
