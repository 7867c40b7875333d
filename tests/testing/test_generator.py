"""The synthetic case generator: deterministic, inside Boston, valid for the catalogue."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.mapping import MappingSet, load_mappings
from hub.model import Case
from hub.testing.generator import (
    BOSTON,
    DEFAULT_MIX,
    LAT_MAX,
    LAT_MIN,
    LONG_MAX,
    LONG_MIN,
    CaseGenerator,
    find_realworld_dir,
    service_weights,
)


@pytest.fixture(scope="module")
def catalogue() -> MappingSet:
    return load_mappings()


@pytest.fixture(scope="module")
def cases(catalogue: MappingSet) -> list[Case]:
    return list(CaseGenerator(catalogue, seed=7).generate(600))


def _dump(cases: list[Case]) -> list[dict]:
    return [c.model_dump(mode="json") for c in cases]


def test_deterministic_for_a_seed(catalogue: MappingSet, cases: list[Case]) -> None:
    again = list(CaseGenerator(catalogue, seed=7).generate(600))
    assert _dump(again) == _dump(cases)
    other = list(CaseGenerator(catalogue, seed=8).generate(50))
    assert _dump(other) != _dump(cases[:50])


def test_inside_the_boston_bbox(cases: list[Case]) -> None:
    for case in cases:
        assert case.lat is not None and case.long is not None
        assert LAT_MIN <= case.lat <= LAT_MAX and LONG_MIN <= case.long <= LONG_MAX
        assert case.address_string and case.address_string[0].isdigit()
        assert case.zipcode and case.zipcode.startswith("02")


def test_only_catalogue_codes_and_most_of_them(catalogue: MappingSet, cases: list[Case]) -> None:
    codes = {c.service_code for c in cases}
    assert codes <= set(catalogue.catalogue)
    assert len(codes) >= len(catalogue.catalogue) // 2
    for case in cases:
        assert case.service_name == catalogue.catalogue[case.service_code].service_name


def test_required_attributes_are_valid(catalogue: MappingSet, cases: list[Case]) -> None:
    for case in cases:
        service = catalogue.catalogue[case.service_code]
        known = {a.code: a for a in service.attributes}
        assert set(case.attributes) <= set(known)
        for attr in service.attributes:
            if attr.required:
                assert attr.code in case.attributes, (case.service_code, attr.code)
        for code, value in case.attributes.items():
            keys = {v.key for v in known[code].values}
            if known[code].datatype == "singlevaluelist":
                assert value in keys
            elif known[code].datatype == "multivaluelist":
                assert value and set(value) <= keys
            elif known[code].datatype == "number":
                assert isinstance(value, int) and value > 0


def test_unique_ids_and_demo_source(catalogue: MappingSet, cases: list[Case]) -> None:
    assert all(c.source_system == "demo-crm" for c in cases)
    assert len({c.source_id for c in cases}) == len(cases)
    assert len({c.hub_id for c in cases}) == len(cases)
    generator = CaseGenerator(catalogue, seed=7)
    first, second = list(generator.generate(5)), list(generator.generate(5))
    assert not {c.source_id for c in first} & {c.source_id for c in second}


def test_time_window_and_daily_rhythm(cases: list[Case]) -> None:
    times = [c.requested_datetime for c in cases]
    assert times == sorted(times)
    # The default window: 28 days from Monday 2025-03-03 00:00 in Boston (DST from 03-09).
    assert datetime(2025, 3, 3, 5, tzinfo=UTC) <= times[0]
    assert times[-1] < datetime(2025, 3, 31, 4, tzinfo=UTC)
    local_hours = [t.astimezone(BOSTON).hour for t in times]
    night = sum(h < 5 for h in local_hours)
    office = sum(9 <= h < 17 for h in local_hours)
    assert office > 4 * night


def test_requesters_and_photos(cases: list[Case]) -> None:
    with_contact = [c.requester for c in cases if c.requester]
    assert 0.6 * len(cases) < len(with_contact) < len(cases)
    assert all(r.email.split("@")[1].startswith("example.") for r in with_contact if r.email)
    assert all(r.phone.startswith("617-555-01") for r in with_contact if r.phone)
    photos = [a for c in cases for a in c.evidence]
    assert photos
    for photo in photos:
        assert photo.url.startswith("https://photos.example.invalid/")
        assert photo.content_type == "image/jpeg"
        assert photo.size and photo.size > 0
        assert photo.digest and photo.digest.startswith("sha256:")
    assert all(c.media_url == c.evidence[0].url for c in cases if c.evidence)


def test_weights_from_real_records_or_default(catalogue: MappingSet, tmp_path: Path) -> None:
    realworld = find_realworld_dir(Path(__file__).parent)
    assert realworld is not None and (realworld / "311_records").is_dir()
    counted = service_weights(catalogue, realworld)
    assert set(counted) == set(catalogue.catalogue)
    assert abs(sum(counted.values()) - 1) < 1e-9
    assert all(w > 0 for w in counted.values())
    assert counted != service_weights(catalogue, tmp_path)  # no records there: the default
    default = CaseGenerator(catalogue, use_realworld=False)
    assert not default.weights_from_records
    assert default.weights == {c: DEFAULT_MIX.get(c, 1.0) for c in sorted(catalogue.catalogue)}


def test_realworld_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HUB_REALWORLD_DIR", str(tmp_path))
    assert find_realworld_dir() == tmp_path


def test_open311_forms(catalogue: MappingSet) -> None:
    forms = CaseGenerator(catalogue, seed=3).generate_open311_form(200)
    assert forms == CaseGenerator(catalogue, seed=3).generate_open311_form(200)
    for form in forms:
        assert form["service_code"] in catalogue.catalogue
        assert "lat" in form or "address_string" in form
        assert all(isinstance(v, str | list) for v in form.values())
        service = catalogue.catalogue[form["service_code"]]
        for attr in service.attributes:
            if attr.required:
                assert f"attribute[{attr.code}]" in form or f"attribute[{attr.code}][]" in form
    assert any("email" in f for f in forms) and any("email" not in f for f in forms)
    assert any("lat" in f and "address_string" not in f for f in forms)
