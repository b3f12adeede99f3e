"""The plan catalogue (CONTRACT.md §4): SKUs, their services, tiers and data flags.

The shipped catalogue is `planshift/data/catalogue.json`; `PLANSHIFT_CATALOGUE` names
a replacement. Either is validated against `schemas/catalogue.schema.json` when loaded,
so a bad catalogue stops a consumer at start, not mid-stream.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from planshift.schema import InvalidEvent, validate
from planshift.settings import Settings

SHIPPED_CATALOGUE = Path(__file__).resolve().parent / "data" / "catalogue.json"


class CatalogueError(ValueError):
    pass


@dataclass(frozen=True)
class Service:
    tier: int
    data: bool


@dataclass(frozen=True)
class Sku:
    sku: str
    name: str
    services: Mapping[str, Service]


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: it is loaded once
class Catalogue:
    skus: Mapping[str, Sku]

    def __contains__(self, sku: str) -> bool:
        return sku in self.skus

    def get(self, sku: str) -> Sku | None:
        return self.skus.get(sku)

    def fewer_services(self, source: str, target: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What makes `target` a plan "with fewer services" than `source` (CONTRACT.md §4 r2):
        the services of `source` that `target` lacks, and the data-related ones it has at a
        lower tier."""
        return _fewer_services(self, source, target)

    def services_of(self, *skus: str | None) -> frozenset[str]:
        """Every service of the given SKUs (unknown ones and None contribute nothing)."""
        return _services_of(self, skus)

    @classmethod
    def from_dict(cls, raw: dict) -> "Catalogue":
        try:
            validate("catalogue", raw)
        except InvalidEvent as exc:
            raise CatalogueError("; ".join(map(str, exc.violations))) from None
        return cls(MappingProxyType({
            sku: Sku(sku, body["name"], MappingProxyType({
                name: Service(svc["tier"], svc["data"]) for name, svc in body["services"].items()
            }))
            for sku, body in raw["skus"].items()
        }))

    @classmethod
    def load(cls, path: Path | None = None) -> "Catalogue":
        path = path or SHIPPED_CATALOGUE
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as exc:
            raise CatalogueError(f"cannot read the plan catalogue {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise CatalogueError(f"the plan catalogue {path} is not JSON: {exc}") from None
        try:
            return cls.from_dict(raw)
        except CatalogueError as exc:
            raise CatalogueError(f"the plan catalogue {path} is invalid: {exc}") from None

    @classmethod
    def for_settings(cls, settings: Settings) -> "Catalogue":
        return cls.load(settings.catalogue_path)


# A catalogue never changes once loaded, and a handful of SKU pairs covers every request:
# intake asks these for each request, so the answers are kept.
@functools.lru_cache(maxsize=4096)
def _fewer_services(catalogue: Catalogue, source: str, target: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    src, tgt = catalogue.skus[source], catalogue.skus[target]
    missing = tuple(sorted(name for name in src.services if name not in tgt.services))
    lower = tuple(sorted(name for name, svc in src.services.items()
                         if svc.data and name in tgt.services and tgt.services[name].tier < svc.tier))
    return missing, lower


@functools.lru_cache(maxsize=4096)
def _services_of(catalogue: Catalogue, skus: tuple[str | None, ...]) -> frozenset[str]:
    return frozenset(name for sku in skus if sku in catalogue for name in catalogue.skus[sku].services)
