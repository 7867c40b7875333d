"""Public works adapter against mocked HTTP (respx): wire format and error classification."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs

import httpx
import pluggy
import pytest
import respx
from pydantic import SecretStr

import adapters.publicworks as plugin
from adapters.publicworks import PublicWorksAdapter, PublicWorksConfig
from hub import hookspecs
from hub.adapters import (
    AuthFailed,
    MalformedResponse,
    OutboundWorkOrder,
    Permanent,
    Transient,
    UnknownOutcome,
)

BASE = "http://cw.test/cityworks"
AUTH = "/Services/General/Authentication/Authenticate"
SR = "/Services/Ams/ServiceRequest/"
PASSWORD = "pw-S3CRET-never-shown"
TOKEN = "tok-ABC-never-shown"
PII = "Jane Resident 555-0100"


def ok(value: object) -> httpx.Response:
    return httpx.Response(200, json={"Status": 0, "Value": value, "ErrorMessages": []})


def refused(*codes: int, status: int = 1) -> httpx.Response:
    items = [{"Code": c, "Name": f"E{c}", "DisplayText": f"bad {PII}"} for c in codes]
    return httpx.Response(200, json={"Status": status, "Message": PII, "ErrorMessages": items})


def record(rid: int = 101, status: str = "New", **fields: object) -> dict:
    return {
        "RequestId": rid,
        "Status": status,
        "OtherSystemId": "hub-1",
        "DateTimeInit": "2026-01-15T09:30:00",
        "DateTimeModified": "2026-01-15T09:30:00",
        **fields,
    }


def form(request: httpx.Request) -> dict:
    fields = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
    fields["data"] = json.loads(fields["data"])
    return fields


def order(**payload: object) -> OutboundWorkOrder:
    return OutboundWorkOrder(
        hub_id="hub-1",
        department="publicworks",
        work_order_type="POTHOLE",
        payload={"CallerFirstName": PII, **payload},
    )


@pytest.fixture
async def adapter():
    config = PublicWorksConfig(
        base_url=BASE, login_name="hub", password=SecretStr(PASSWORD), timeout_seconds=2
    )
    adapter = PublicWorksAdapter(config)
    yield adapter
    await adapter.aclose()


@pytest.fixture
def cw():
    with respx.mock(using="httpx", base_url=BASE, assert_all_called=False) as mock:
        mock.post(AUTH, name="auth").mock(return_value=ok({"Token": TOKEN, "Expires": None}))
        yield mock


def assert_clean(exc: BaseException) -> None:
    text = f"{exc} {exc!r}"
    for secret in (PASSWORD, TOKEN, PII):
        assert secret not in text
    assert exc.__cause__ is None  # httpx errors carry the request body: never chained


# --------------------------------------------------------------------------- wire format


async def test_create_posts_form_encoded_data_json_and_token(adapter, cw):
    create = cw.post(SR + "Create").mock(return_value=ok(record()))
    ref = await adapter.create(order())
    sent = form(create.calls.last.request)
    assert create.calls.last.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent["token"] == TOKEN
    assert sent["data"]["OtherSystemId"] == "hub-1"
    assert sent["data"]["ProblemCode"] == "POTHOLE"
    assert (ref.external_id, ref.raw_status, ref.hub_reference) == ("101", "New", "hub-1")
    login = parse_qs(cw["auth"].calls.last.request.content.decode())
    assert json.loads(login["data"][0]) == {"LoginName": "hub", "Password": PASSWORD}


async def test_other_system_id_is_always_the_hub_id(adapter, cw):
    create = cw.post(SR + "Create").mock(return_value=ok(record()))
    await adapter.create(order(OtherSystemId="something-else", ProblemCode="SIGN"))
    data = form(create.calls.last.request)["data"]
    assert data["OtherSystemId"] == "hub-1"
    assert data["ProblemCode"] == "SIGN"  # the mapping's choice wins over the route's


async def test_token_is_reused_across_calls(adapter, cw):
    cw.post(SR + "ByOtherSystemId").mock(return_value=ok(None))
    for _ in range(3):
        assert await adapter.find_by_reference("hub-1") is None
    assert cw["auth"].call_count == 1


async def test_find_by_reference_returns_the_record(adapter, cw):
    route = cw.post(SR + "ByOtherSystemId").mock(return_value=ok(record(7, "Dispatch")))
    ref = await adapter.find_by_reference("hub-1")
    assert ref is not None and (ref.external_id, ref.raw_status) == ("7", "Dispatch")
    assert form(route.calls.last.request)["data"] == {"OtherSystemId": "hub-1"}


# --------------------------------------------------------------------------- classification


async def test_429_with_retry_after_seconds(adapter, cw):
    cw.post(SR + "Create").mock(return_value=httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(Transient) as caught:
        await adapter.create(order())
    assert caught.value.retry_after == 7 and caught.value.status_code == 429


async def test_429_with_retry_after_http_date(adapter, cw):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    cw.post(SR + "Create").mock(return_value=httpx.Response(429, headers={"Retry-After": when}))
    with pytest.raises(Transient) as caught:
        await adapter.create(order())
    assert 25 <= caught.value.retry_after <= 31


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_transient(adapter, cw, status):
    cw.post(SR + "Create").mock(return_value=httpx.Response(status, text="<html>oops</html>"))
    with pytest.raises(Transient) as caught:
        await adapter.create(order())
    assert type(caught.value) is Transient and caught.value.status_code == status


@pytest.mark.parametrize("body", ["<html><body>Server Error</body></html>", '{"Status": 0, "Va'])
async def test_unreadable_body_is_malformed(adapter, cw, body):
    cw.post(SR + "Create").mock(return_value=httpx.Response(200, text=body))
    with pytest.raises(MalformedResponse) as caught:
        await adapter.create(order())
    assert_clean(caught.value)


@pytest.mark.parametrize("code", [2, 30, 33, 35])
async def test_business_errors_are_permanent(adapter, cw, code):
    cw.post(SR + "Create").mock(return_value=refused(code))
    with pytest.raises(Permanent) as caught:
        await adapter.create(order())
    assert str(code) in str(caught.value)
    assert_clean(caught.value)


async def test_other_status_1_is_transient(adapter, cw):
    cw.post(SR + "Create").mock(return_value=refused(1))
    with pytest.raises(Transient) as caught:
        await adapter.create(order())
    assert not isinstance(caught.value, Permanent | MalformedResponse)


async def test_status_2_refreshes_the_token_once(adapter, cw):
    cw["auth"].mock(side_effect=[ok({"Token": "old"}), ok({"Token": TOKEN})])
    create = cw.post(SR + "Create").mock(side_effect=[refused(status=2), ok(record())])
    ref = await adapter.create(order())
    assert ref.external_id == "101"
    assert cw["auth"].call_count == 2
    assert [form(c.request)["token"] for c in create.calls] == ["old", TOKEN]


async def test_status_2_after_refresh_is_auth_failed(adapter, cw):
    cw.post(SR + "Create").mock(return_value=refused(status=2))
    with pytest.raises(AuthFailed) as caught:
        await adapter.create(order())
    assert cw["auth"].call_count == 2
    assert_clean(caught.value)


async def test_invalid_credentials_are_auth_failed_without_the_password(adapter, cw):
    cw["auth"].mock(return_value=refused(status=3))
    with pytest.raises(AuthFailed) as caught:
        await adapter.find_by_reference("hub-1")
    assert_clean(caught.value)


async def test_expiring_token_is_renewed_before_use(adapter, cw):
    soon = (datetime.now(adapter.zone) + timedelta(seconds=30)).replace(tzinfo=None)
    cw["auth"].mock(return_value=ok({"Token": TOKEN, "Expires": soon.isoformat()}))
    cw.post(SR + "ByOtherSystemId").mock(return_value=ok(None))
    await adapter.find_by_reference("a")
    await adapter.find_by_reference("b")
    assert cw["auth"].call_count == 2  # 30 s left < 60 s margin: log in again


async def test_connect_errors_retry_in_call_then_transient(adapter, cw):
    route = cw.post(SR + "Create").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(Transient) as caught:
        await adapter.create(order())
    assert route.call_count == 3
    assert caught.value.not_applied  # never sent: the retry needs no lookup first
    assert_clean(caught.value)


async def test_connect_error_then_success_is_invisible(adapter, cw):
    cw.post(SR + "Create").mock(side_effect=[httpx.ConnectError("refused"), ok(record())])
    assert (await adapter.create(order())).external_id == "101"


@pytest.mark.parametrize("error", [httpx.ReadTimeout("t"), httpx.RemoteProtocolError("gone")])
async def test_lost_answer_on_create_is_unknown_outcome(adapter, cw, error):
    route = cw.post(SR + "Create").mock(side_effect=error)
    with pytest.raises(UnknownOutcome) as caught:
        await adapter.create(order())
    assert route.call_count == 1  # never blindly resent
    assert not caught.value.not_applied
    assert_clean(caught.value)


async def test_lost_answer_on_a_read_is_just_transient(adapter, cw):
    cw.post(SR + "ByOtherSystemId").mock(side_effect=httpx.ReadTimeout("t"))
    with pytest.raises(Transient) as caught:
        await adapter.find_by_reference("hub-1")
    assert not isinstance(caught.value, UnknownOutcome)


async def test_cancel_of_an_already_cancelled_request_succeeds(adapter, cw):
    cw.post(SR + "Cancel").mock(return_value=refused(32))
    cw.post(SR + "ById").mock(return_value=ok(record(status="Canceled")))
    await adapter.cancel("101", "duplicate")


async def test_cancel_of_a_closed_request_is_permanent(adapter, cw):
    cw.post(SR + "Cancel").mock(return_value=refused(32))
    cw.post(SR + "ById").mock(return_value=ok(record(status="Closed")))
    with pytest.raises(Permanent):
        await adapter.cancel("101")


# --------------------------------------------------------------------------- status


async def test_poll_changes_converts_local_times_to_utc(adapter, cw):
    search = cw.post(SR + "Search").mock(return_value=ok([101, 102]))
    cw.post(SR + "ByIds").mock(
        return_value=ok(
            [
                record(101, "Dispatch", DateTimeModified="2026-01-15T09:30:00"),  # EST, UTC-5
                record(
                    102,
                    "Closed",
                    OtherSystemId="hub-2",
                    DateTimeModified="2026-07-15T09:30:00",
                    Resolution="Patched",
                    Attachments=[{"Url": "/files/1.jpg", "ContentType": "image/jpeg"}],
                ),  # EDT
            ]
        )
    )
    page = await adapter.poll_changes(datetime(2026, 1, 15, 14, 0, tzinfo=UTC))
    assert form(search.calls.last.request)["data"] == {"DateModifiedBegin": "2026-01-15T09:00:00"}
    first, second = page.events
    assert first.occurred_at == datetime(2026, 1, 15, 14, 30, tzinfo=UTC)
    assert second.occurred_at == datetime(2026, 7, 15, 13, 30, tzinfo=UTC)
    assert (second.raw_code, second.closure_text, second.hub_reference) == (
        "Closed",
        "Patched",
        "hub-2",
    )
    assert [e.url for e in second.evidence] == [BASE + "/files/1.jpg"]
    assert first.sequence < second.sequence
    assert len({first.external_event_id, second.external_event_id}) == 2
    assert page.next_watermark == second.occurred_at


async def test_get_status_reads_by_ids(adapter, cw):
    route = cw.post(SR + "ByIds").mock(return_value=ok([record(5, "Inspect")]))
    (event,) = await adapter.get_status(["5"])
    assert form(route.calls.last.request)["data"] == {"RequestIds": [5]}
    assert (event.external_id, event.raw_code) == ("5", "Inspect")


# --------------------------------------------------------------------------- config & plugin


def test_password_must_come_from_env_or_file(monkeypatch, tmp_path):
    settings = {"base_url": BASE, "login_name": "hub"}
    # pydantic wraps the hub's SecretSourceError in a ValidationError (a ValueError).
    with pytest.raises(ValueError, match="secrets must come from the environment"):
        PublicWorksConfig.model_validate({**settings, "password": PASSWORD})
    monkeypatch.setenv("CW_PASSWORD", PASSWORD)
    config = PublicWorksConfig.model_validate({**settings, "password": {"env": "CW_PASSWORD"}})
    assert config.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(config)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    config = PublicWorksConfig.model_validate({**settings, "password": {"file": str(secret)}})
    assert config.password.get_secret_value() == PASSWORD
    assert PublicWorksConfig.secret_fields() == ["password"]
    assert config.timezone == "America/New_York"


def test_config_rejects_bad_zone_and_url():
    with pytest.raises(ValueError, match="time zone"):
        PublicWorksConfig(base_url=BASE, login_name="x", password=SecretStr("p"), timezone="Mars/X")
    with pytest.raises(ValueError, match="http"):
        PublicWorksConfig(base_url="cw.local", login_name="x", password=SecretStr("p"))


def test_plugin_registers_the_adapter():
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(plugin)
    (classes,) = manager.hook.hub_register_adapters()
    assert classes == [PublicWorksAdapter]
    assert {c.value for c in PublicWorksAdapter.capabilities} == {
        "create",
        "find_by_reference",
        "add_note",
        "attach",
        "cancel",
        "status_poll",
    }


def test_status_codes_are_the_agency_vocabulary():
    codes = PublicWorksAdapter.status_codes(None)  # type: ignore[arg-type]
    assert len(codes) == 13 and {"New", "Closed", "Canceled", "On Hold"} <= codes
