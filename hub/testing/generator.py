"""Realistic synthetic 311 cases for tests, demos and benchmarks.

Nothing here is copied from real records. The service mix is either counted at run time
from the real exports in ``shared/realworld`` (read in place through hub.imports.crm) or
a built-in default; everything else (places, streets, names, texts) is small hand-written
constants. Output is deterministic for a seed.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from hub.imports.crm import UnknownFormat, read_export
from hub.mapping import MappingSet, ServiceAttribute, ServiceDefinition
from hub.model import Attachment, Case, Priority, Requester, new_hub_id

REALWORLD_ENV = "HUB_REALWORLD_DIR"
SOURCE_SYSTEM = "demo-crm"
PHOTO_HOST = "https://photos.example.invalid"  # .invalid never resolves (RFC 2606)
BOSTON = ZoneInfo("America/New_York")

# Boston's bounding box: every generated point lies inside it.
LAT_MIN, LAT_MAX = 42.23, 42.40
LONG_MIN, LONG_MAX = -71.19, -70.99


# --------------------------------------------------------------------------- real data dir


def find_realworld_dir(start: Path | None = None) -> Path | None:
    """The ``shared/realworld`` directory: $HUB_REALWORLD_DIR, else the first one found
    walking up from `start` (default: the working directory), then from this repository."""
    if env := os.environ.get(REALWORLD_ENV):
        return Path(env)  # explicit wins, even if wrong: callers report a missing dir
    for base in (Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parent):
        for folder in (base, *base.parents):
            candidate = folder / "shared" / "realworld"
            if candidate.is_dir():
                return candidate
    return None


def record_files(realworld_dir: Path) -> list[Path]:
    """The real 311 record exports under `realworld_dir`, in a stable order."""
    folder = realworld_dir / "311_records"
    return sorted(p for p in folder.rglob("*") if p.suffix in (".csv", ".json"))


# --------------------------------------------------------------------------- service mix

# Used when the real records are not available: a typical big-city 311 mix.
# fmt: off
DEFAULT_MIX: dict[str, float] = {
    "STCLEAN": 12, "NOISE": 12, "STRLGHT": 10, "SIDEWALK": 9, "POTHOLE": 8,
    "MISSEDTR": 7, "BULKITEM": 6, "ABANVEH": 6, "TREEDMG": 5, "GRAFFITI": 5,
    "DUMPING": 4, "TRASHSTOR": 3, "RODENT": 3, "PROPMAINT": 3, "MISSEDRC": 2,
    "RECYCART": 2, "OVGRLOT": 2, "NEEDLE": 1,
}
# fmt: on
_SMOOTHING = 0.1  # share of the mix spread evenly, so every catalogue service shows up
_weights_cache: dict[tuple[str, tuple[Any, ...]], dict[str, float]] = {}


def service_weights(catalogue: MappingSet, realworld_dir: Path | None) -> dict[str, float]:
    """Weight per catalogue code: counted from the real records when present, else default.

    Each city (folder) counts equally and, within it, each file: NYC's four exports must
    not outvote SF's one, nor Boston's filtered sidewalk/streetlight file the whole city.
    """
    codes = sorted(catalogue.catalogue)
    if realworld_dir is None or not (realworld_dir / "311_records").is_dir():
        return {code: DEFAULT_MIX.get(code, 1.0) for code in codes}
    key = (str(realworld_dir.resolve()), _fingerprint(catalogue))
    if key not in _weights_cache:
        _weights_cache[key] = _counted_weights(catalogue, realworld_dir, codes)
    return dict(_weights_cache[key])


def _counted_weights(
    catalogue: MappingSet, realworld_dir: Path, codes: list[str]
) -> dict[str, float]:
    per_city: dict[str, list[Counter[str]]] = {}
    for path in record_files(realworld_dir):
        try:
            counts = Counter(
                r.case.service_code
                for r in read_export(path, catalogue=catalogue)
                if r.case is not None
            )
        except UnknownFormat:
            continue
        if counts:
            per_city.setdefault(path.parent.name, []).append(counts)
    if not per_city:  # records present but none maps to this catalogue
        return {code: DEFAULT_MIX.get(code, 1.0) for code in codes}
    mix: Counter[str] = Counter()
    for files in per_city.values():
        for counts in files:
            total = sum(counts.values()) * len(files) * len(per_city)
            for code, count in counts.items():
                mix[code] += count / total
    even = _SMOOTHING / len(codes)
    return {code: (1 - _SMOOTHING) * mix[code] + even for code in codes}


def _fingerprint(catalogue: MappingSet) -> tuple[Any, ...]:
    return tuple(
        (s.service_code, s.service_name, tuple(s.aliases)) for s in catalogue.catalogue.values()
    )


# --------------------------------------------------------------------------- places


class Neighbourhood(NamedTuple):
    name: str
    lat: float
    long: float
    zipcode: str
    weight: float


# Hand-picked approximate centres of Boston neighbourhoods; weights roughly by population.
NEIGHBOURHOODS: tuple[Neighbourhood, ...] = (
    Neighbourhood("Downtown", 42.3555, -71.0605, "02108", 6),
    Neighbourhood("Back Bay", 42.3503, -71.0810, "02116", 5),
    Neighbourhood("South End", 42.3410, -71.0720, "02118", 5),
    Neighbourhood("Dorchester", 42.3016, -71.0650, "02124", 12),
    Neighbourhood("Roxbury", 42.3152, -71.0900, "02119", 8),
    Neighbourhood("Jamaica Plain", 42.3097, -71.1151, "02130", 6),
    Neighbourhood("Allston/Brighton", 42.3505, -71.1500, "02135", 8),
    Neighbourhood("East Boston", 42.3750, -71.0390, "02128", 7),
    Neighbourhood("Charlestown", 42.3782, -71.0602, "02129", 3),
    Neighbourhood("South Boston", 42.3350, -71.0450, "02127", 6),
    Neighbourhood("Roslindale", 42.2870, -71.1290, "02131", 4),
    Neighbourhood("West Roxbury", 42.2830, -71.1600, "02132", 4),
    Neighbourhood("Hyde Park", 42.2565, -71.1241, "02136", 4),
    Neighbourhood("Mattapan", 42.2771, -71.0914, "02126", 4),
)
_SPREAD_DEG = 0.006  # about 600 m: cases cluster around a centre

# Word lists: one line per row reads better than one line per word.
# fmt: off
STREETS = (
    "Main St", "Elm St", "Oak Ave", "Maple St", "Cedar St", "Pine St", "Walnut St",
    "Chestnut St", "Park Ave", "Washington St", "Highland Ave", "Spring St", "School St",
    "Church St", "Water St", "Union St", "Pleasant St", "Prospect St", "Centre St",
    "Warren St", "Linden Rd", "Hillside Ter", "River Rd", "Adams St",
)
LANDMARKS = (
    "the bus stop", "the corner store", "the playground", "the school entrance",
    "the library", "the church", "the laundromat", "the community garden", "the T stop",
)

# Residents' share of requests by local hour: quiet nights, morning and afternoon peaks.
HOURLY = (1, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 9, 8, 8, 9, 9, 8, 7, 6, 5, 4, 3, 2, 1)
WEEKDAY = (10, 10, 10, 10, 9, 6, 5)  # Monday .. Sunday

# --------------------------------------------------------------------------- people

FIRST_NAMES = (
    "Ana", "Ben", "Chloe", "Dmitri", "Esther", "Farah", "Gabriel", "Hana", "Ivan", "Jalen",
    "Keiko", "Luis", "Maya", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Samir", "Tanya",
)
LAST_NAMES = (
    "Alvarez", "Brennan", "Chen", "Dossou", "Evans", "Fitzgerald", "Garcia", "Haddad",
    "Ibrahim", "Jones", "Kowalski", "Le", "Murphy", "Nguyen", "O'Connor", "Patel",
    "Rossi", "Silva", "Tran", "Walsh",
)
MAIL_DOMAINS = ("example.com", "example.org", "example.net")  # reserved, never deliverable

# --------------------------------------------------------------------------- texts

DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "POTHOLE": ("Deep pothole in the right lane near {landmark}.",
                "Pothole on {street}, cars swerving around it.",
                "Large hole in the road at {number} {street}, getting worse after the rain."),
    "STRLGHT": ("Street light out in front of {number} {street}.",
                "The light near {landmark} has been out for a week.",
                "Light pole on {street} is dark, the block is very dark at night."),
    "SIDEWALK": ("Raised sidewalk slab at {number} {street}, people trip on it.",
                 "Broken sidewalk near {landmark}, hard to pass with a stroller."),
    "STCLEAN": ("Litter all along {street} near {landmark}.",
                "Broken glass on the sidewalk at {number} {street}."),
    "TREEDMG": ("Tree at {number} {street} needs attention.",
                "Large limb hanging over the sidewalk near {landmark}."),
    "GRAFFITI": ("Graffiti on the wall at {number} {street}.",
                 "Tags sprayed on the utility box near {landmark}."),
    "NEEDLE": ("Discarded syringe on the sidewalk near {landmark}.",
               "Needle in the grass at {number} {street}."),
    "MISSEDTR": ("Trash was out on time but not picked up at {number} {street}.",
                 "Whole side of {street} missed on trash day."),
    "MISSEDRC": ("Recycling not collected at {number} {street}.",
                 "Recycling cart still full, the truck skipped {street}."),
    "BULKITEM": ("Please pick up items at {number} {street}.",
                 "Moving out, need a bulk pickup at {number} {street}."),
    "RECYCART": ("Recycling cart was stolen, need a new one at {number} {street}.",
                 "Cart lid broken, please replace."),
    "DUMPING": ("Mattress and bags dumped near {landmark}.",
                "Someone dumped construction debris at {number} {street}."),
    "OVGRLOT": ("Vacant lot at {number} {street} is overgrown with weeds.",
                "Lot next to {landmark} full of trash and tall grass."),
    "PROPMAINT": ("Building at {number} {street} looks unsafe, bricks falling.",
                  "Back porch at {number} {street} is collapsing."),
    "TRASHSTOR": ("Trash bags left out all week at {number} {street}.",
                  "Barrels without lids on the sidewalk near {landmark}."),
    "ABANVEH": ("Car has not moved in weeks at {number} {street}.",
                "Vehicle with flat tyres parked near {landmark} for a month."),
    "RODENT": ("Rats running around the trash at {number} {street}.",
               "Rodents seen every evening near {landmark}."),
    "NOISE": ("Loud music from {number} {street} every night after midnight.",
              "Construction noise at {number} {street} before 7am."),
}
# fmt: on
GENERIC_DESCRIPTION = ("{service} at {number} {street}.", "{service} near {landmark}.")

CAR_MAKES = ("Toyota", "Honda", "Ford", "Nissan", "Chevrolet", "Subaru", "Hyundai")
COLOURS = ("silver", "black", "white", "red", "blue", "grey", "green")
_PLATE_LETTERS = "ABCDEFGHJKLMNPRSTVWXYZ"

DEFAULT_START = datetime(2025, 3, 3, tzinfo=BOSTON)  # a Monday


# --------------------------------------------------------------------------- generator


class CaseGenerator:
    """Synthetic Boston 311 cases over the catalogue's services; deterministic per seed.

    Successive `generate` calls continue the same sequence (source ids stay unique).
    Each call spreads its cases over the window [start, start + days).
    """

    def __init__(
        self,
        catalogue: MappingSet,
        seed: int = 0,
        realworld_dir: Path | None = None,
        *,
        use_realworld: bool = True,
        start: datetime = DEFAULT_START,
        days: int = 28,
        photo_rate: float = 0.3,
        anonymous_rate: float = 0.2,
    ) -> None:
        if not catalogue.catalogue:
            raise ValueError("the catalogue has no services to generate cases for")
        self.catalogue = catalogue
        self.seed = seed
        self.start = start if start.tzinfo else start.replace(tzinfo=UTC)
        self.days = days
        self.photo_rate = photo_rate
        self.anonymous_rate = anonymous_rate
        folder = (realworld_dir or find_realworld_dir()) if use_realworld else None
        self.weights = service_weights(catalogue, folder)
        self.weights_from_records = folder is not None and (folder / "311_records").is_dir()
        self._codes = list(self.weights)
        self._cum_weights = _cumulative(self.weights.values())
        self._places_cum = _cumulative(n.weight for n in NEIGHBOURHOODS)
        self._days_cum = _cumulative(WEEKDAY[(self.start.weekday() + d) % 7] for d in range(days))
        self._hours_cum = _cumulative(HOURLY)
        self._rng = random.Random(seed)
        self._count = 0

    # ----------------------------------------------------------------------- public

    def generate(self, n: int) -> Iterator[Case]:
        """`n` cases in requested-time order."""
        for when in sorted(self._when() for _ in range(n)):
            yield self._case(when)

    def generate_open311_form(self, n: int) -> list[dict[str, Any]]:
        """`n` Open311 POST /requests form bodies (all values strings, lists repeat keys)."""
        return [self.open311_form(case) for case in self.generate(n)]

    def open311_form(self, case: Case) -> dict[str, Any]:
        """The form fields a CRM would POST for `case` (location varies like real clients)."""
        form: dict[str, Any] = {"service_code": case.service_code}
        where = self._rng.random()
        if where >= 0.15 and case.lat is not None and case.long is not None:
            form |= {"lat": f"{case.lat:.6f}", "long": f"{case.long:.6f}"}
        if where < 0.3 and case.address_string:  # some clients send only the address
            form["address_string"] = case.address_string
        form["description"] = case.description or ""
        if case.media_url:
            form["media_url"] = case.media_url
        form |= _contact_fields(case.requester)
        form |= _attribute_fields(case.attributes)
        return form

    # ----------------------------------------------------------------------- parts

    def _case(self, when: datetime) -> Case:
        rng = self._rng
        self._count += 1
        source_id = f"DEMO-{self.seed}-{self._count:07d}"
        service = self.catalogue.catalogue[self._pick(self._codes, self._cum_weights)]
        place = self._pick(NEIGHBOURHOODS, self._places_cum)
        lat, long = self._point(place)
        number, street = rng.randint(1, 999), rng.choice(STREETS)
        attributes = self._attributes(service, when)
        evidence = self._photos(source_id)
        return Case(
            hub_id=new_hub_id(SOURCE_SYSTEM, source_id, when),
            source_system=SOURCE_SYSTEM,
            source_id=source_id,
            service_code=service.service_code,
            service_name=service.service_name,
            description=self._description(service, attributes, number, street),
            lat=lat,
            long=long,
            address_string=f"{number} {street}",
            zipcode=place.zipcode,
            media_url=evidence[0].url if evidence else None,
            requested_datetime=when,
            updated_datetime=when,
            attributes=attributes,
            evidence=evidence,
            requester=self._requester(),
            priority=_priority(attributes),
        )

    def _pick(self, items: Any, cum: list[float]) -> Any:
        return self._rng.choices(items, cum_weights=cum)[0]

    def _when(self) -> datetime:
        rng = self._rng
        day = self._pick(range(self.days), self._days_cum)
        hour = self._pick(range(24), self._hours_cum)
        local = self.start.astimezone(BOSTON).replace(
            hour=0, minute=0, second=0, microsecond=0
        ) + timedelta(days=day)
        # Wall-clock construction keeps the rhythm local across DST changes.
        local = local.replace(hour=hour, minute=rng.randrange(60), second=rng.randrange(60))
        return local.astimezone(UTC)

    def _point(self, place: Neighbourhood) -> tuple[float, float]:
        for _ in range(20):
            lat = self._rng.gauss(place.lat, _SPREAD_DEG)
            # A degree of longitude is shorter here: widen it to keep clusters round.
            long = self._rng.gauss(place.long, _SPREAD_DEG * 1.35)
            if LAT_MIN <= lat <= LAT_MAX and LONG_MIN <= long <= LONG_MAX:
                return round(lat, 6), round(long, 6)
        return place.lat, place.long

    def _attributes(self, service: ServiceDefinition, when: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for attr in service.attributes:
            # Server-set attributes (variable: false, e.g. a GIS ward) are not the
            # resident's to fill; optional ones are answered about half the time.
            if not attr.required and (not attr.variable or self._rng.random() < 0.5):
                continue
            values[attr.code] = self._value(attr, when)
        return values

    def _value(self, attr: ServiceAttribute, when: datetime) -> Any:
        rng = self._rng
        keys = [v.key for v in attr.values]
        match attr.datatype:
            case "singlevaluelist":
                return rng.choice(keys)
            case "multivaluelist":
                return sorted(rng.sample(keys, rng.randint(1, min(3, len(keys)))), key=str)
            case "number":
                return rng.randint(1, 6)
            case "datetime":
                return (when + timedelta(days=rng.randint(2, 14))).date().isoformat()
            case "text":
                return "Please call before coming, the gate is locked."
            case _:
                return self._string(attr.code)

    def _string(self, code: str) -> str:
        rng = self._rng
        if code == "pole_id":
            return str(rng.randint(10_000, 9_999_999))
        if code == "account_number":
            return f"SAN-{rng.randint(0, 99_999_999):08d}"
        if code == "plate":
            letters = "".join(rng.choices(_PLATE_LETTERS, k=2))
            return f"{rng.randint(1, 9)}{letters} {rng.randint(100, 999)}"
        if code == "make":
            return f"{rng.choice(COLOURS)} {rng.choice(CAR_MAKES)}"
        return f"{code} {rng.randint(1, 99)}"

    def _description(
        self, service: ServiceDefinition, attributes: dict[str, Any], number: int, street: str
    ) -> str:
        template = self._rng.choice(DESCRIPTIONS.get(service.service_code, GENERIC_DESCRIPTION))
        text = template.format(
            number=number,
            street=street,
            service=service.service_name,
            landmark=self._rng.choice(LANDMARKS),
        )
        lead = _chosen_label(service, attributes)  # keep the text consistent with answers
        return f"{lead}. {text}" if lead else text

    def _requester(self) -> Requester | None:
        rng = self._rng
        if rng.random() < self.anonymous_rate:
            return None
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        handle = f"{first}.{last}".lower().replace("'", "")
        email = f"{handle}{rng.randint(1, 99)}@{rng.choice(MAIL_DOMAINS)}"
        phone = f"617-555-01{rng.randint(0, 99):02d}"  # 555-0100..0199: fictional numbers
        kind = rng.random()
        return Requester(
            first_name=first,
            last_name=last,
            email=email if kind < 0.8 else None,
            phone=phone if kind > 0.4 else None,
        )

    def _photos(self, source_id: str) -> list[Attachment]:
        rng = self._rng
        if rng.random() >= self.photo_rate:
            return []
        return [
            Attachment(
                url=f"{PHOTO_HOST}/{source_id}/{k}.jpg",
                content_type="image/jpeg",
                size=rng.randint(80_000, 4_000_000),
                digest=Attachment.digest_of(f"{source_id}/{k}".encode()),
                filename=f"photo-{k}.jpg",
            )
            for k in range(1, rng.choice((1, 1, 1, 2, 3)) + 1)
        ]


# --------------------------------------------------------------------------- helpers


def _cumulative(weights: Any) -> list[float]:
    total, out = 0.0, []
    for weight in weights:
        total += float(weight)
        out.append(total)
    return out


def _chosen_label(service: ServiceDefinition, attributes: dict[str, Any]) -> str | None:
    """The name of the first required single choice, e.g. "Light is flickering"."""
    for attr in service.attributes:
        if attr.required and attr.datatype == "singlevaluelist" and attr.code in attributes:
            return next(v.name for v in attr.values if v.key == attributes[attr.code])
    return None


def _priority(attributes: dict[str, Any]) -> Priority:
    if attributes.get("hazard") == "yes" or attributes.get("condition") == "knocked_down":
        return Priority.HIGH
    return Priority.NORMAL


def _contact_fields(requester: Requester | None) -> dict[str, str]:
    if requester is None:
        return {}
    fields = requester.model_dump(include={"first_name", "last_name", "email", "phone"})
    return {name: value for name, value in fields.items() if value}


def _attribute_fields(attributes: dict[str, Any]) -> dict[str, Any]:
    form: dict[str, Any] = {}
    for code, value in attributes.items():
        if isinstance(value, list):  # multivaluelist: attribute[CODE][]=a&attribute[CODE][]=b
            form[f"attribute[{code}][]"] = [str(v) for v in value]
        else:
            form[f"attribute[{code}]"] = str(value)
    return form
