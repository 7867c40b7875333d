"""GIS adapter: an Esri ArcGIS REST geocoder and feature service (department-apis.md §5).

Not a work-order target: it declares ``enrich`` only. Lookups:

- ``geocode(address)``: ``findAddressCandidates`` → best candidate at or above ``min_score``;
- ``reverse_geocode(lat, long)``: ``reverseGeocode`` → address label ("no address" is None);
- ``locate(lat, long)``: point-in-polygon over each configured polygon layer (district,
  ward, route, yard). Layers are downloaded once (``where=1=1``) into the polygon cache and
  tested locally, so the intake hook can answer from memory; ``cache_polygons: false``
  asks the service instead (feature-layer ``query`` with a point geometry);
- ``nearest_asset(kind, lat, long)``: asset layer ``query`` with ``distance``.

ArcGIS answers errors inside HTTP 200 bodies. Classification: 498/499 (token invalid or
missing) → fetch a new token and retry once, then AuthFailed; 400 → Permanent; 401/403 →
AuthFailed; anything else → Transient. HTTP 429/5xx and network errors → Transient; an
unreadable body → MalformedResponse. Lookups are reads: retrying is always safe.
"""

from __future__ import annotations

import asyncio
import math
import time
from itertools import pairwise
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from adapters.gis.cache import MISS, GisCache, point_key, shared_cache
from hub.adapters import (
    Adapter,
    AdapterConfig,
    AuthFailed,
    Capability,
    MalformedResponse,
    Permanent,
    Transient,
    parse_retry_after,
)
from hub.model import Case
from hub.transports.http import make_async_client

GEOCODE = "/arcgis/rest/services/World/GeocodeServer"
FEATURES = "/arcgis/rest/services/City/FeatureServer"
TOKEN_CODES = {498, 499}
NO_ADDRESS = "Unable to find address"
STATUS_FIELD = "gis_status"  # case attribute: awaiting | pending | done | unavailable


class GisConfig(AdapterConfig):
    base_url: str = Field(description="ArcGIS site root (services below it)")
    client_id: str = Field(description="OAuth client-credentials id")
    client_secret: SecretStr = Field(description="from {env: VAR} or {file: /path} only")
    token_path: str = "/sharing/rest/oauth2/token"
    geocode_path: str = GEOCODE
    features_path: str = FEATURES
    layers: dict[str, int] = Field(
        default={"district": 0, "ward": 1, "route": 2, "yard": 3},
        description="case attribute name → polygon layer id",
    )
    asset_layers: dict[str, int] = Field(
        default={"streetlight": 10, "hydrant": 11, "tree": 12},
        description="asset kind → point layer id",
    )
    asset_for_service: dict[str, str] = Field(
        default={"STRLGHT": "streetlight", "TREEDMG": "tree"},
        description="service code → asset kind whose nearest id goes to attributes.asset_id",
    )
    asset_within_m: float = Field(default=150.0, gt=0)
    min_score: int = Field(default=80, ge=0, le=100, description="geocode acceptance score")
    cache_polygons: bool = Field(default=True, description="test polygons locally")
    cache_size: int = Field(default=10_000, ge=16)
    cache_ttl_seconds: float = Field(default=3600.0, gt=0)
    hold_for_enrichment: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="hold the create until GIS answers: auto = when a route rule of the "
        "service reads a GIS-filled field",
    )
    max_hold_seconds: float = Field(
        default=300.0, ge=0, description="then dispatch on the service-code route anyway"
    )


class GisAdapter(Adapter):
    name = "gis"
    transport = "http"
    config_model = GisConfig
    capabilities = frozenset({Capability.ENRICH})
    description = "Esri ArcGIS REST geocoder and feature layers (enrichment, not work orders)"

    config: GisConfig

    def __init__(self, config: GisConfig, *, department: str | None = None) -> None:
        super().__init__(config, department=department)
        self.cache: GisCache = shared_cache(
            config.base_url.rstrip("/"), config.cache_size, config.cache_ttl_seconds
        )
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock: asyncio.Lock | None = None

    # ----------------------------------------------------------------------- lookups

    async def geocode(self, address: str) -> tuple[float, float, str] | None:
        """(lat, long, matched address) of the best candidate, or None."""
        key = normalize(address)
        cached = self.cache.addresses.get(key)
        if cached is not MISS:
            return cached
        body = await self._get(
            f"{self.config.geocode_path}/findAddressCandidates",
            {"SingleLine": address, "outFields": "Match_addr,Addr_type", "maxLocations": 3},
        )
        best = max(body.get("candidates") or [], key=lambda c: c.get("score", 0), default=None)
        result = None
        if best is not None and best.get("score", 0) >= self.config.min_score:
            location = best.get("location") or {}
            result = (float(location["y"]), float(location["x"]), str(best.get("address")))
        self.cache.addresses.put(key, result)
        return result

    async def reverse_geocode(self, lat: float, long: float) -> str | None:
        key = point_key(lat, long)
        cached = self.cache.points.get(key)
        if cached is not MISS:
            return cached
        try:
            body = await self._get(
                f"{self.config.geocode_path}/reverseGeocode", {"location": f"{long},{lat}"}
            )
        except Permanent as error:
            if NO_ADDRESS not in error.message:
                raise
            body = {}
        label = (body.get("address") or {}).get("Match_addr") or None
        self.cache.points.put(key, label)
        return label

    async def locate(self, lat: float, long: float) -> dict[str, str | None]:
        """Attribute name → polygon label for every configured layer."""
        found: dict[str, str | None] = {}
        for name, layer in self.config.layers.items():
            if self.config.cache_polygons:
                features = await self._layer(layer)
                found[name] = polygon_label(features, lat, long)
            else:
                found[name] = await self.query_point(layer, lat, long)
        return found

    async def query_point(self, layer: int, lat: float, long: float) -> str | None:
        """Feature-layer query with a point geometry (point-in-polygon on the server)."""
        body = await self._get(
            f"{self.config.features_path}/{layer}/query",
            {**_point_params(lat, long), "outFields": "*", "returnGeometry": "false"},
        )
        features = body.get("features") or []
        return _label(features[0]["attributes"]) if features else None

    async def nearest_asset(self, kind: str, lat: float, long: float) -> str | None:
        key = (kind, *point_key(lat, long, 4))
        cached = self.cache.assets.get(key)
        if cached is not MISS:
            return cached
        layer = self.config.asset_layers[kind]
        body = await self._get(
            f"{self.config.features_path}/{layer}/query",
            {
                **_point_params(lat, long),
                "distance": self.config.asset_within_m,
                "units": "esriSRUnit_Meter",
                "outFields": "ASSET_ID",
                "returnGeometry": "true",
            },
        )
        nearest = min(
            body.get("features") or [],
            key=lambda f: _meters(lat, long, f["geometry"]["y"], f["geometry"]["x"]),
            default=None,
        )
        asset = str(nearest["attributes"]["ASSET_ID"]) if nearest else None
        self.cache.assets.put(key, asset)
        return asset

    async def enrich(self, case: Case) -> dict[str, Any]:
        """Every fact the GIS can add to `case`, as intake-style changes (attributes
        merged). Fields the case already has are kept: GIS never overwrites a resident."""
        changes: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        lat, long = case.lat, case.long
        if (lat is None or long is None) and case.address_string:
            hit = await self.geocode(case.address_string)
            if hit is not None:
                lat, long = hit[0], hit[1]
                changes.update(lat=lat, long=long)
        if lat is not None and long is not None:
            if not case.address_string:
                label = await self.reverse_geocode(lat, long)
                if label:
                    changes["address_string"] = label
            for name, value in (await self.locate(lat, long)).items():
                if value is not None and case.attributes.get(name) in (None, ""):
                    attributes[name] = value
            kind = self.config.asset_for_service.get(case.service_code)
            if kind and not case.attributes.get("asset_id"):
                asset = await self.nearest_asset(kind, lat, long)
                if asset:
                    attributes["asset_id"] = asset
        attributes[STATUS_FIELD] = "done"
        changes["attributes"] = attributes
        return changes

    def enrich_from_cache(self, case: Case) -> tuple[dict[str, Any], bool]:
        """What the caches alone can add (no I/O): (changes, complete). Used at intake."""
        changes: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        complete = True
        lat, long = case.lat, case.long
        if (lat is None or long is None) and case.address_string:
            hit = self.cache.addresses.get(normalize(case.address_string))
            if hit is MISS:
                return {}, False
            if hit is not None:
                lat, long = hit[0], hit[1]
                changes.update(lat=lat, long=long)
        if lat is None or long is None:
            return changes, complete
        if not case.address_string:
            label = self.cache.points.get(point_key(lat, long))
            complete &= label is not MISS
            if label not in (MISS, None):
                changes["address_string"] = label
        for name, layer in self.config.layers.items():
            features = self.cache.polygons.get(layer) if self.config.cache_polygons else MISS
            if features is MISS:
                complete = False
                continue
            value = polygon_label(features, lat, long)
            if value is not None and case.attributes.get(name) in (None, ""):
                attributes[name] = value
        kind = self.config.asset_for_service.get(case.service_code)
        if kind and not case.attributes.get("asset_id"):
            asset = self.cache.assets.get((kind, *point_key(lat, long, 4)))
            complete &= asset is not MISS
            if asset not in (MISS, None):
                attributes["asset_id"] = asset
        if attributes:
            changes["attributes"] = attributes
        return changes, complete

    # ----------------------------------------------------------------------- transport

    async def _layer(self, layer: int) -> list[dict]:
        cached = self.cache.polygons.get(layer)
        if cached is not MISS:
            return cached
        body = await self._get(
            f"{self.config.features_path}/{layer}/query",
            {"where": "1=1", "outFields": "*", "returnGeometry": "true", "outSR": 4326},
        )
        features = body.get("features") or []
        if body.get("exceededTransferLimit"):
            raise Permanent(f"layer {layer} is too large to cache: set cache_polygons: false")
        self.cache.polygons.put(layer, features)
        return features

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = make_async_client(
                base_url=self.config.base_url.rstrip("/"), timeout=self.config.timeout_seconds
            )
        return self._client

    async def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        stale: str | None = None
        for attempt in (1, 2):
            token = await self._access_token(stale=stale)
            body = await self._send("GET", path, params={**params, "f": "json", "token": token})
            error = body.get("error")
            if not isinstance(error, dict):
                return body
            code = _code(error)
            if code in TOKEN_CODES and attempt == 1:
                stale = token  # expired or revoked: one fresh token, then retry later
                continue
            raise _classified(error, code, path, retried=attempt == 2)
        raise AssertionError("unreachable")

    async def _access_token(self, *, stale: str | None = None) -> str:
        """The current token; a new one if it expired or is `stale` (refused just now).
        Concurrent callers refused with the same token refresh it once between them."""
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            expired = self._token is None or time.monotonic() >= self._token_expires
            if expired or (stale is not None and stale == self._token):
                await self._fetch_token()
        return self._token or ""

    async def _fetch_token(self) -> None:
        body = await self._send(
            "POST",
            self.config.token_path,
            data={
                "client_id": self.config.client_id,
                "client_secret": self.config.client_secret.get_secret_value(),
                "grant_type": "client_credentials",
                "f": "json",
            },
        )
        if "error" in body or not body.get("access_token"):
            raise AuthFailed("GIS refused the client credentials")
        self._token = str(body["access_token"])
        ttl = float(body.get("expires_in") or 3600)
        self._token_expires = time.monotonic() + max(1.0, ttl - 30)

    async def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self.client().request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Transient(f"GIS unreachable ({type(exc).__name__})") from None
        code = response.status_code
        if code in (401, 403):
            raise AuthFailed(f"GIS refused credentials (HTTP {code})", status_code=code)
        if code == 429 or code >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise Transient(f"GIS HTTP {code}", retry_after=retry_after, status_code=code)
        if code >= 400:
            raise Permanent(f"GIS refused the request (HTTP {code})", status_code=code)
        try:
            body = response.json()
        except ValueError:
            raise MalformedResponse("GIS answered with something that is not JSON") from None
        if not isinstance(body, dict):
            raise MalformedResponse("GIS answered with JSON that is not an object")
        return body

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# --------------------------------------------------------------------------- helpers


def normalize(address: str) -> str:
    return " ".join(address.casefold().replace(",", " ").split())


def polygon_label(features: list[dict], lat: float, long: float) -> str | None:
    for feature in features:
        rings = (feature.get("geometry") or {}).get("rings") or []
        # Even-odd over all rings: holes (inner rings) cancel out as ArcGIS defines them.
        if sum(_in_ring(long, lat, ring) for ring in rings) % 2 == 1:
            return _label(feature.get("attributes") or {})
    return None


def _in_ring(x: float, y: float, ring: list[list[float]]) -> bool:
    inside = False
    for (x1, y1), (x2, y2) in pairwise(ring):
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def _label(attributes: dict[str, Any]) -> str | None:
    for key in ("NAME", "LABEL", "DISTRICT", "WARD", "ROUTE", "YARD"):
        if attributes.get(key) not in (None, ""):
            return str(attributes[key])
    return None


def _point_params(lat: float, long: float) -> dict[str, Any]:
    return {
        "geometry": f"{long},{lat}",
        "geometryType": "esriGeometryPoint",
        "inSR": 4326,
        "spatialRel": "esriSpatialRelIntersects",
    }


def _meters(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dx = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    return 6_371_000.0 * math.hypot(dx, math.radians(lat2 - lat1))


def _code(error: dict[str, Any]) -> int | None:
    try:
        return int(error.get("code"))
    except (TypeError, ValueError):
        return None


def _classified(
    error: dict[str, Any], code: int | None, path: str, *, retried: bool = False
) -> Exception:
    details = "; ".join(str(d) for d in error.get("details") or [])
    message = f"GIS error {code} on {path.rsplit('/', 1)[-1]}: {error.get('message')}"
    message += f" ({details})" if details else ""
    if code in TOKEN_CODES and retried:
        # A fresh token refused again: tokens churning (revoked under us), not bad
        # credentials (those fail at the token endpoint): try again later.
        return Transient(message, status_code=code)
    if code in TOKEN_CODES or code in (401, 403):
        return AuthFailed(message, status_code=code)
    if code == 400:
        return Permanent(message, status_code=code)
    return Transient(message, status_code=code)
