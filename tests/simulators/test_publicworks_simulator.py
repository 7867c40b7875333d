"""The Cityworks-like simulator and the shared simulator machinery, over real HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from hub.testing.simulators.base import Fault, FaultInjector, FaultProfile, SimulatorServer
from hub.testing.simulators.publicworks import (
    DEFAULT_PASSWORD,
    STATUS_CODES,
    PublicWorksSimulator,
)

SR = "/Services/Ams/ServiceRequest/"


@pytest.fixture(scope="module")
def server():
    with SimulatorServer(PublicWorksSimulator()) as running:
        yield running


@pytest.fixture
def client(server):
    server.simulator.reset()
    server.simulator.set_faults("none")
    with httpx.Client(base_url=server.url, timeout=5) as http:
        yield http


def login(client: httpx.Client, password: str = DEFAULT_PASSWORD) -> dict:
    data = json.dumps({"LoginName": "hub", "Password": password})
    return client.post("/Services/General/Authentication/Authenticate", data={"data": data}).json()


def call(client: httpx.Client, method: str, data: dict, token: str | None = None) -> dict:
    token = token or login(client)["Value"]["Token"]
    return client.post(SR + method, data={"data": json.dumps(data), "token": token}).json()


def create(client: httpx.Client, ref: str, token: str | None = None, **extra) -> dict:
    return call(client, "Create", {"ProblemCode": "POTHOLE", "OtherSystemId": ref, **extra}, token)


def test_login_and_wrong_credentials(client):
    answer = login(client)
    assert answer["Status"] == 0 and answer["Value"]["Token"] and answer["Value"]["Expires"]
    assert login(client, "wrong")["Status"] == 3


def test_unknown_or_expired_token_is_status_2(client, server):
    assert call(client, "ById", {"RequestId": 1}, token="nope") == {
        **call(client, "ById", {"RequestId": 1}, token="nope"),
        "Status": 2,
    }
    server.simulator.token_ttl_seconds = 0
    try:
        token = login(client)["Value"]["Token"]
        assert call(client, "ById", {"RequestId": 1}, token)["Status"] == 2
    finally:
        server.simulator.token_ttl_seconds = 1800


def test_create_validation_commits_nothing(client, server):
    missing = call(client, "Create", {"ProblemCode": "POTHOLE"})
    assert missing["Status"] == 1 and missing["ErrorMessages"][0]["Code"] == 33
    unknown = call(client, "Create", {"ProblemCode": "NOPE", "OtherSystemId": "x"})
    assert unknown["ErrorMessages"][0]["Code"] == 30
    assert server.simulator.snapshot()["records"] == []


def test_create_does_not_deduplicate_and_counts_calls(client):
    token = login(client)["Value"]["Token"]
    first = create(client, "dup", token, Address="1 Main St", X=1.5, Y=2.5)["Value"]
    second = create(client, "dup", token)["Value"]
    assert first["RequestId"] != second["RequestId"]
    assert (first["Status"], first["ProbAddress"], first["SRX"]) == ("New", "1 Main St", 1.5)
    state = client.get("/__sim__/state").json()
    assert state["create_calls"] == {"dup": 2} and state["duplicates"] == {"dup": 2}
    assert [r["create_calls"] for r in state["records"]] == [2, 2]
    found = call(client, "ByOtherSystemId", {"OtherSystemId": "dup"}, token)["Value"]
    assert found["RequestId"] == first["RequestId"]
    assert call(client, "ByOtherSystemId", {"OtherSystemId": "none"}, token)["Value"] is None


def test_reads_search_comments_cancel_close(client):
    token = login(client)["Value"]["Token"]
    a = create(client, "a", token)["Value"]["RequestId"]
    b = create(client, "b", token)["Value"]["RequestId"]
    mark = call(client, "ById", {"RequestId": a}, token)["Value"]["DateTimeModified"]
    time.sleep(0.01)
    assert call(client, "Search", {"DateModifiedBegin": mark}, token)["Value"] == [a, b]
    call(client, "Cancel", {"RequestIds": [b], "CancelReason": "dup"}, token)
    after = call(client, "ById", {"RequestId": b}, token)["Value"]["DateTimeModified"]
    assert call(client, "Search", {"DateModifiedBegin": after}, token)["Value"] == [b]
    assert call(client, "Cancel", {"RequestIds": [b]}, token)["ErrorMessages"][0]["Code"] == 32
    assert call(client, "AddComments", {"RequestId": a, "Comments": "hi"}, token)["Status"] == 0
    closed = call(client, "Close", {"RequestIds": [a]}, token)["Value"][0]
    assert closed["Status"] == "Closed" and closed["Resolution"]
    assert [
        r["Status"] for r in call(client, "ByIds", {"RequestIds": [a, b, 999]}, token)["Value"]
    ] == ["Closed", "Canceled"]
    assert call(client, "ById", {"RequestId": 999}, token)["ErrorMessages"][0]["Code"] == 2
    log = call(client, "AuditLog", {"RequestId": a}, token)["Value"]
    assert [e["NewValue"] for e in log] == ["New", "Closed"]
    feed = call(client, "Changes", {"Since": 1}, token)["Value"]
    assert [e["Sequence"] for e in feed] == [2, 3, 4]


def test_statuses_are_the_agency_vocabulary(client):
    codes = [s["Code"] for s in call(client, "Statuses", {})["Value"]]
    assert codes == list(STATUS_CODES) and len(codes) == 13


def test_attachment_upload(client, server):
    token = login(client)["Value"]["Token"]
    rid = create(client, "att", token)["Value"]["RequestId"]
    answer = client.post(
        "/Services/AMS/Attachments/AddRequestAttachment",
        data={"data": json.dumps({"RequestId": rid}), "token": token},
        files={"file": ("p.jpg", b"jpegbytes", "image/jpeg")},
    ).json()
    assert answer["Status"] == 0
    assert client.get(answer["Value"]["Url"]).content == b"jpegbytes"


def test_advance_progresses_and_closes_with_sequence_and_photos(client):
    token = login(client)["Value"]["Token"]
    ids = [create(client, f"adv-{n}", token)["Value"]["RequestId"] for n in range(3)]
    step = client.post("/__sim__/advance", json={"count": 2}).json()["changed"]
    assert [(c["RequestId"], c["NewValue"]) for c in step] == [
        (ids[0], "Dispatch"),
        (ids[1], "Dispatch"),
    ]
    closed = client.post("/__sim__/advance", json={"count": 5, "close": True}).json()["changed"]
    assert len(closed) == 3 and all(c["Resolution"] and len(c["Photos"]) == 2 for c in closed)
    assert client.get(closed[0]["Photos"][0]).headers["content-type"] == "image/jpeg"
    sequences = [c["Sequence"] for c in step + closed]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    stamps = [c["DateModified"] for c in step + closed]
    assert stamps == sorted(stamps)
    assert client.post("/__sim__/advance", json={"count": 5}).json()["changed"] == []
    bad = client.post("/__sim__/advance", json={"count": 1, "status": "Bogus"})
    assert bad.status_code == 422


def test_every_status_can_be_set(client, server):
    token = login(client)["Value"]["Token"]
    rid = create(client, "st", token)["Value"]["RequestId"]
    for status in ("Web", "Pending", "On Hold", "Hearing", "Letter", "Refer", "Reinsp", "Extended"):
        changed = client.post(
            "/__sim__/advance", json={"count": 1, "request_ids": [rid], "status": status}
        ).json()["changed"]
        assert changed[0]["NewValue"] == status


def test_reset_forgets_records(client):
    create(client, "r")
    client.post("/__sim__/reset")
    state = client.get("/__sim__/state").json()
    assert state["records"] == [] and state["create_calls"] == {} and state["faults"] == {}


# --------------------------------------------------------------------------- faults


def test_outage_and_rate_limit(client):
    token = login(client)["Value"]["Token"]
    client.post("/__sim__/faults", json={"preset": "outage"})
    assert client.post(SR + "ById", data={"data": "{}", "token": token}).status_code == 503
    client.post(
        "/__sim__/faults", json={"rate_limit_429": 1.0, "retry_after_seconds": 5, "seed": 1}
    )
    headers = [
        client.post(SR + "ById", data={"data": "{}", "token": token}).headers["retry-after"]
        for _ in range(12)
    ]
    assert "5" in headers and any("GMT" in h for h in headers)  # both Retry-After forms
    counters = client.get("/__sim__/state").json()["faults"]
    assert counters == {"error_5xx": 1, "rate_limit_429": 12}


def test_error_envelope_commits_nothing_malformed_commits(client, server):
    token = login(client)["Value"]["Token"]
    client.post("/__sim__/faults", json={"error_envelope": 1.0})
    answer = create(client, "env", token)
    assert answer["Status"] == 1 and answer["ErrorMessages"][0]["Code"] == 1
    client.post("/__sim__/faults", json={"malformed": 1.0})
    bodies = [
        client.post(
            SR + "Create",
            data={
                "token": token,
                "data": json.dumps({"ProblemCode": "POTHOLE", "OtherSystemId": "mal"}),
            },
        ).text
        for _ in range(2)
    ]
    for body in bodies:
        with pytest.raises(ValueError):
            json.loads(body)
    assert any(b.startswith("<!DOCTYPE html>") for b in bodies)
    # the error envelope answered before the department saw the call: not counted
    assert server.simulator.snapshot()["create_calls"] == {"mal": 2}
    assert len(server.simulator.snapshot()["records"]) == 2


def test_timeout_after_commit_hangs_without_blocking_others(client, server):
    token = login(client)["Value"]["Token"]
    client.post("/__sim__/faults", json={"timeout_after_commit": 1.0, "hang_seconds": 1.0})
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            SR + "Create",
            timeout=0.3,
            data={
                "token": token,
                "data": json.dumps({"ProblemCode": "POTHOLE", "OtherSystemId": "hung"}),
            },
        )
    assert len(server.simulator.snapshot()["records"]) == 1  # committed before the hang
    hung = threading.Thread(
        target=lambda: httpx.post(
            server.url + SR + "ById", timeout=3, data={"data": "{}", "token": token}
        )
    )
    hung.start()
    started = time.monotonic()
    assert client.get("/__sim__/state").status_code == 200  # admin routes never hang
    assert time.monotonic() - started < 0.5
    hung.join()


def test_latency_applies_to_every_call(client):
    client.post("/__sim__/faults", json={"preset": "slow"})
    started = time.monotonic()
    login(client)
    assert time.monotonic() - started >= 0.05


def test_bad_fault_profile_is_refused(client):
    assert client.post("/__sim__/faults", json={"error_5xx": 2}).status_code == 422
    assert client.post("/__sim__/faults", json={"preset": "nope"}).status_code == 422
    assert client.post("/__sim__/faults", json={"bogus": 1}).status_code == 422


def test_profile_parsing_and_presets():
    profile = FaultProfile.parse("flaky,latency_ms=50,seed=7")
    assert profile.latency_ms == 50 and profile.seed == 7
    assert 0.25 <= sum(p for _, p in profile.weights()) <= 0.35
    assert all(p > 0 for _, p in profile.weights())  # every kind of fault
    assert FaultProfile.parse("outage").error_5xx == 1.0
    assert FaultProfile.parse("slow").latency_ms == 50
    assert FaultProfile.parse("").model_dump() == FaultProfile().model_dump()
    assert FaultProfile.parse("error_5xx=0.5").error_5xx == 0.5
    with pytest.raises(ValueError):
        FaultProfile.parse("nonsense")


def test_injector_is_deterministic_for_a_seed_and_respects_allowed_kinds():
    def draws(seed: int) -> list[Fault | None]:
        injector = FaultInjector(FaultProfile.preset("flaky", seed=seed))
        return [injector.draw() for _ in range(300)]

    assert draws(5) == draws(5) and draws(5) != draws(6)
    assert 0.2 < sum(d is not None for d in draws(5)) / 300 < 0.4
    injector = FaultInjector(FaultProfile(token_expiry=1.0))
    assert injector.draw(frozenset({Fault.ERROR_5XX})) is None
    assert injector.counters == {}


def test_server_start_stop_on_a_given_port():
    probe = SimulatorServer(PublicWorksSimulator()).start()
    port = probe.port
    probe.stop()
    with SimulatorServer(PublicWorksSimulator(), port=port) as again:
        assert again.port == port and httpx.get(again.url + "/__sim__/state").status_code == 200
