"""An Esri ArcGIS REST-shaped GIS for a small synthetic city over Boston's coordinates.

The city is generated here, deterministically from a seed (nothing is copied from real
data): council districts, wards, sanitation routes and public-works yards are jittered
grids of polygons over the bounding box of Boston's 311 records; address points and assets
(streetlight poles, hydrants, trees) are scattered over it. Tests may add real addresses
from shared/realworld with ``POST /__sim__/addresses`` (read in place, never copied).

Endpoints (department-apis.md §5), all answering JSON with errors *inside HTTP 200*:

- ``POST /sharing/rest/oauth2/token`` (client credentials) → ``access_token``, ``expires_in``
- ``GET  /arcgis/rest/services/World/GeocodeServer/findAddressCandidates``
- ``GET  /arcgis/rest/services/World/GeocodeServer/reverseGeocode``
- ``GET  /arcgis/rest/services/City/FeatureServer/{layer}/query`` (point-in-polygon with a
  point geometry, ``where=1=1`` to download a layer, ``distance`` for nearby assets)

Missing token → ``{"error": {"code": 499}}``; bad/expired token → 498; bad parameters →
400. The ``token_expiry`` fault invalidates the caller's token; ``error_envelope`` answers
``{"error": {"code": 500}}``. Run standalone: ``hub simulate gis --port 8084``.
"""

from __future__ import annotations

import math
import random
import re
import secrets
import time
from collections import Counter
from itertools import pairwise
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from hub.testing.simulators.base import BaseSimulator, Fault, FaultProfile, serve_forever

# Boston's 311 records fall in this box (hub/testing/generator.py uses the same one).
LAT_MIN, LAT_MAX = 42.23, 42.40
LON_MIN, LON_MAX = -71.19, -70.99
DEFAULT_CLIENT_ID = "hub-gis"
DEFAULT_CLIENT_SECRET = "gis-sim-secret"
GEOCODE = "/arcgis/rest/services/World/GeocodeServer"
FEATURES = "/arcgis/rest/services/City/FeatureServer"
# layer id → (name, attribute field, grid columns, grid rows)
POLYGON_LAYERS: dict[int, tuple[str, str, int, int]] = {
    0: ("districts", "DISTRICT", 3, 3),
    1: ("wards", "WARD", 6, 4),
    2: ("routes", "ROUTE", 4, 4),
    3: ("yards", "YARD", 2, 2),
}
# layer id → (asset kind, id prefix, count)
ASSET_LAYERS: dict[int, tuple[str, str, int]] = {
    10: ("streetlight", "SL", 1200),
    11: ("hydrant", "HY", 600),
    12: ("tree", "TR", 800),
}
STREETS = [
    "Washington St",
    "Dorchester Ave",
    "Blue Hill Ave",
    "Centre St",
    "Columbia Rd",
    "Tremont St",
    "Massachusetts Ave",
    "Commonwealth Ave",
    "Hyde Park Ave",
    "River St",
    "Adams St",
    "Bennington St",
    "Hancock St",
    "Warren St",
    "South St",
    "Harvard St",
]
# Ward 3 is placed over Dorchester (the publicworks mapping's "District 03" yard).
WARD_3_AT = (42.3016, -71.065)
EARTH_M = 6_371_000.0


def normalize_address(text: str) -> str:
    """Case, punctuation and spacing do not matter; neither do a trailing city/state/zip."""
    text = re.sub(r"[^0-9a-z ]", " ", text.casefold())
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"( boston| ma| \d{5})+$", "", text).strip()


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_M * math.asin(math.sqrt(h))


def point_in_ring(x: float, y: float, ring: list[list[float]]) -> bool:
    """Ray casting (even-odd) over one closed ring of [x, y] vertices."""
    inside = False
    for (x1, y1), (x2, y2) in pairwise(ring):
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def _grid(nx: int, ny: int, rng: random.Random) -> list[list[tuple[float, float]]]:
    """(nx+1) x (ny+1) vertices; interior ones jittered so cells are irregular quads."""
    dx, dy = (LON_MAX - LON_MIN) / nx, (LAT_MAX - LAT_MIN) / ny
    vertices = []
    for i in range(nx + 1):
        column = []
        for j in range(ny + 1):
            x, y = LON_MIN + i * dx, LAT_MIN + j * dy
            if 0 < i < nx and 0 < j < ny:
                x += rng.uniform(-0.2, 0.2) * dx
                y += rng.uniform(-0.2, 0.2) * dy
            column.append((round(x, 6), round(y, 6)))
        vertices.append(column)
    return vertices


def _cells(name: str, field: str, nx: int, ny: int, rng: random.Random) -> list[dict]:
    v = _grid(nx, ny, rng)
    features = []
    for j in range(ny):
        for i in range(nx):
            ring = [v[i][j], v[i + 1][j], v[i + 1][j + 1], v[i][j + 1], v[i][j]]
            label = _label(name, j * nx + i + 1)
            features.append(
                {
                    "attributes": {"OBJECTID": len(features) + 1, field: label, "NAME": label},
                    "geometry": {"rings": [[list(p) for p in ring]]},
                }
            )
    return features


def _label(layer: str, n: int) -> str:
    if layer == "routes":
        return f"R{n:02d}"
    if layer == "yards":
        return "ABCD"[n - 1]
    return str(n)


def _place_ward_3(features: list[dict]) -> None:
    """Swap labels so that ward "3" is the cell over North Dorchester."""
    y, x = WARD_3_AT
    target = next(f for f in features if point_in_ring(x, y, f["geometry"]["rings"][0]))
    three = next(f for f in features if f["attributes"]["WARD"] == "3")
    for feature, label in ((three, target["attributes"]["WARD"]), (target, "3")):
        feature["attributes"]["WARD"] = feature["attributes"]["NAME"] = label


class City:
    """The generated city: polygon layers, address points, assets."""

    def __init__(self, seed: int = 311, addresses: int = 600) -> None:
        rng = random.Random(seed)
        self.layers: dict[int, list[dict]] = {
            layer: _cells(name, field, nx, ny, rng)
            for layer, (name, field, nx, ny) in POLYGON_LAYERS.items()
        }
        _place_ward_3(self.layers[1])
        self.addresses: dict[str, dict[str, Any]] = {}
        for n in range(addresses):
            lat, lon = rng.uniform(LAT_MIN, LAT_MAX), rng.uniform(LON_MIN, LON_MAX)
            label = f"{rng.randrange(1, 1999)} {rng.choice(STREETS)}, Boston, MA"
            self.add_address(label, lat, lon, source="generated", number=n)
        self.assets: dict[int, list[dict[str, Any]]] = {}
        for layer, (_kind, prefix, count) in ASSET_LAYERS.items():
            self.assets[layer] = [
                {
                    "ASSET_ID": f"{prefix}-{k:06d}",
                    "y": rng.uniform(LAT_MIN, LAT_MAX),
                    "x": rng.uniform(LON_MIN, LON_MAX),
                }
                for k in range(count)
            ]

    def add_address(self, label: str, lat: float, lon: float, **extra: Any) -> None:
        key = normalize_address(label)
        if key:
            self.addresses[key] = {"label": label, "lat": lat, "lon": lon, **extra}

    def polygon_at(self, layer: int, lat: float, lon: float) -> dict | None:
        for feature in self.layers.get(layer, []):
            if point_in_ring(lon, lat, feature["geometry"]["rings"][0]):
                return feature
        return None

    def nearest_address(self, lat: float, lon: float, within_m: float = 500.0) -> dict | None:
        best = min(
            self.addresses.values(),
            key=lambda a: distance_m(lat, lon, a["lat"], a["lon"]),
            default=None,
        )
        if best is None or distance_m(lat, lon, best["lat"], best["lon"]) > within_m:
            return None
        return best


class GisSimulator(BaseSimulator):
    """ArcGIS REST (geocoder + feature service) over the synthetic :class:`City`."""

    name: ClassVar[str] = "gis"

    def __init__(
        self,
        faults: FaultProfile | str | dict[str, Any] | None = None,
        *,
        seed: int = 311,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        token_ttl_seconds: float = 3600.0,
    ) -> None:
        super().__init__(faults)
        self.city = City(seed)
        self.client_id, self.client_secret = client_id, client_secret
        self.token_ttl = token_ttl_seconds
        self.tokens: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self.records: dict[str, Any] = {}  # the demo's advance() looks here: a GIS has none

    # -- BaseSimulator ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "tokens": len(self.tokens),
            "addresses": len(self.city.addresses),
            "duplicates": {},
        }

    def advance(self, count: int, *, close: bool = False, **options: Any) -> list[dict]:
        return []  # nothing to work on in a GIS

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()
            self.tokens.clear()

    def error_envelope(self) -> Response:
        return JSONResponse(
            {"error": {"code": 500, "message": "Unable to complete operation.", "details": []}}
        )

    def admin_routes(self) -> list[BaseRoute]:
        extra = Route("/__sim__/addresses", self._addresses, methods=["POST"])
        return [*super().admin_routes(), extra]

    async def _addresses(self, request: Request) -> Response:
        """Body: {"addresses": [{"address": "...", "lat": 42.3, "long": -71.0}, ...]}."""
        body = await request.json()
        for row in body.get("addresses", []):
            self.city.add_address(str(row["address"]), float(row["lat"]), float(row["long"]))
        return JSONResponse({"addresses": len(self.city.addresses)})

    def api_routes(self) -> list[BaseRoute]:
        return [
            Route("/sharing/rest/oauth2/token", self._token, methods=["POST", "GET"]),
            Route(f"{GEOCODE}/findAddressCandidates", self._find, methods=["GET", "POST"]),
            Route(f"{GEOCODE}/reverseGeocode", self._reverse, methods=["GET", "POST"]),
            Route(f"{FEATURES}/{{layer:int}}/query", self._query, methods=["GET", "POST"]),
        ]

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _error(code: int, message: str, *details: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message, "details": list(details)}})

    async def _params(self, request: Request) -> dict[str, str]:
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.form()).items()})
        return params

    async def _guarded(self, request: Request, kind: str, answer) -> Response:
        """Faults, token check, then the answer (a callable of the params)."""
        fault, early = await self.begin()
        if early is not None:
            return early
        params = await self._params(request)
        token = params.get("token")
        with self.lock:
            self.calls[kind] += 1
            expires = self.tokens.get(token or "")
            if fault is Fault.TOKEN_EXPIRY and token in self.tokens:
                del self.tokens[token]  # the service restarted: every token is void
                expires = None
        if not token:
            return self._error(499, "Token Required")
        if expires is None or expires < time.time():
            return self._error(498, "Invalid token.")
        return await self.finish(fault, answer(params))

    # -- endpoints ----------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        _, early = await self.begin(frozenset({Fault.ERROR_5XX, Fault.RATE_LIMIT}))
        if early is not None:
            return early
        params = await self._params(request)
        if (params.get("client_id"), params.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return self._error(400, "Invalid client_id or client_secret", "invalid_client")
        token = secrets.token_hex(16)
        with self.lock:
            self.tokens[token] = time.time() + self.token_ttl
        return JSONResponse({"access_token": token, "expires_in": int(self.token_ttl)})

    async def _find(self, request: Request) -> Response:
        return await self._guarded(request, "findAddressCandidates", self._find_answer)

    def _find_answer(self, params: dict[str, str]) -> Response:
        text = params.get("SingleLine") or params.get("singleLine") or params.get("Address")
        if not text:
            return self._error(
                400,
                "Cannot perform query. Invalid query parameters.",
                "SingleLine or Address is required.",
            )
        key = normalize_address(text)
        hit = self.city.addresses.get(key)
        candidates = []
        if hit is not None:
            candidates.append(self._candidate(hit, 100))
        else:  # a partial match (house number and street) scores lower
            for stored_key, row in self.city.addresses.items():
                if key and (stored_key.startswith(key) or key.startswith(stored_key)):
                    candidates.append(self._candidate(row, 85))
                    break
        limit = int(params.get("maxLocations") or 5)
        reference = {"wkid": 4326, "latestWkid": 4326}
        return JSONResponse({"spatialReference": reference, "candidates": candidates[:limit]})

    @staticmethod
    def _candidate(row: dict[str, Any], score: int) -> dict[str, Any]:
        return {
            "address": row["label"],
            "location": {"x": row["lon"], "y": row["lat"]},
            "score": score,
            "attributes": {
                "Match_addr": row["label"],
                "Addr_type": "PointAddress",
                "Score": score,
                "Status": "M",
            },
        }

    async def _reverse(self, request: Request) -> Response:
        return await self._guarded(request, "reverseGeocode", self._reverse_answer)

    def _reverse_answer(self, params: dict[str, str]) -> Response:
        point = _point(params.get("location"))
        if point is None:
            return self._error(
                400, "Cannot perform query. Invalid query parameters.", "Invalid location."
            )
        x, y = point
        hit = self.city.nearest_address(y, x)
        if hit is None:
            return self._error(
                400,
                "Cannot perform query. Invalid query parameters.",
                "Unable to find address for the specified location.",
            )
        return JSONResponse(
            {
                "address": {
                    "Match_addr": hit["label"],
                    "LongLabel": hit["label"],
                    "Addr_type": "PointAddress",
                    "City": "Boston",
                    "Region": "MA",
                },
                "location": {
                    "x": hit["lon"],
                    "y": hit["lat"],
                    "spatialReference": {"wkid": 4326, "latestWkid": 4326},
                },
            }
        )

    async def _query(self, request: Request) -> Response:
        layer = int(request.path_params["layer"])
        answer = lambda p: self._query_answer(layer, p)  # noqa: E731
        return await self._guarded(request, f"query:{layer}", answer)

    def _query_answer(self, layer: int, params: dict[str, str]) -> Response:
        if layer not in POLYGON_LAYERS and layer not in ASSET_LAYERS:
            return self._error(400, "Invalid or missing input parameters.", f"no layer {layer}")
        point = _point(params.get("geometry"))
        where = (params.get("where") or "").replace(" ", "")
        if point is None and where != "1=1":
            return self._error(
                400,
                "Cannot perform query. Invalid query parameters.",
                "Either a where clause or a geometry is required.",
            )
        geometry = (params.get("returnGeometry") or "true").lower() == "true"
        if layer in ASSET_LAYERS:
            features = self._assets(layer, point, float(params.get("distance") or 100.0))
        elif point is None:
            features = self.city.layers[layer]
        else:
            hit = self.city.polygon_at(layer, point[1], point[0])
            features = [hit] if hit else []
        if not geometry:
            features = [{"attributes": f["attributes"]} for f in features]
        return JSONResponse(
            {
                "objectIdFieldName": "OBJECTID",
                "geometryType": "esriGeometryPolygon"
                if layer in POLYGON_LAYERS
                else "esriGeometryPoint",
                "spatialReference": {"wkid": 4326, "latestWkid": 4326},
                "features": features,
                "exceededTransferLimit": False,
            }
        )

    def _assets(self, layer: int, point: tuple[float, float] | None, within: float) -> list[dict]:
        if point is None:
            return []
        x, y = point
        near = []
        for asset in self.city.assets[layer]:
            if abs(asset["y"] - y) > 0.01 or abs(asset["x"] - x) > 0.015:
                continue  # cheap box filter first (~1 km)
            meters = distance_m(y, x, asset["y"], asset["x"])
            if meters <= within:
                near.append((meters, asset))
        near.sort(key=lambda pair: pair[0])
        return [
            {"attributes": {"ASSET_ID": a["ASSET_ID"]}, "geometry": {"x": a["x"], "y": a["y"]}}
            for _, a in near
        ]


def _point(value: str | None) -> tuple[float, float] | None:
    """``x,y`` or ``{"x":..,"y":..}`` → (x, y)."""
    if not value:
        return None
    numbers = re.findall(r"-?\d+(?:\.\d+)?", value)
    if len(numbers) < 2:
        return None
    if value.strip().startswith("{"):
        x = re.search(r'"x"\s*:\s*(-?\d+(?:\.\d+)?)', value)
        y = re.search(r'"y"\s*:\s*(-?\d+(?:\.\d+)?)', value)
        if not (x and y):
            return None
        return float(x.group(1)), float(y.group(1))
    return float(numbers[0]), float(numbers[1])


def main(port: int = 8084, host: str = "127.0.0.1", faults: str = "none") -> None:
    serve_forever(GisSimulator(faults=faults), host=host, port=port)
