"""Public works department: service requests in a Trimble Cityworks (AMS) install.

The hub's case id travels as ``OtherSystemId``, which Cityworks stores but does not
deduplicate on; the hub's engine makes create exactly-once by looking the request up with
``ByOtherSystemId`` after an unknown outcome (find_by_reference).

Status sync polls ``Search {DateModifiedBegin}`` then ``ByIds`` (both real Cityworks): one
event per changed request, carrying its current status. Intermediate statuses between two
polls collapse into the latest one; the mapping must (and the hub does) tolerate that.
More changes than ``max_changes_per_poll`` (an outage, a bulk update) are read a time window
at a time (``DateModifiedEnd``), one page per window, so no poll is all-or-nothing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator

from adapters.publicworks.client import (
    CityworksClient,
    RequestRefused,
    parse_local,
    utc_to_local,
)
from hub.adapters import (
    Adapter,
    AdapterConfig,
    Capability,
    DepartmentEvent,
    ExternalRef,
    MalformedResponse,
    OutboundNote,
    OutboundWorkOrder,
    Permanent,
    StatusPage,
    Transient,
)
from hub.model import Attachment

SR = "Ams/ServiceRequest/"
ATTACH = "AMS/Attachments/AddRequestAttachment"
# Agency-configured vocabulary (St. Louis CSB, a Cityworks city; department-apis.md §2.1).
STATUS_CODES = frozenset(
    {
        "Canceled",
        "Closed",
        "Dispatch",
        "Extended",
        "Hearing",
        "Inspect",
        "Letter",
        "New",
        "On Hold",
        "Pending",
        "Refer",
        "Reinsp",
        "Web",
    }
)
HUB_ATTACHMENT_NOTE = "Evidence from 311"  # marks our uploads so they are not echoed back
CANT_CANCEL = 32
READ_ATTEMPTS = 4  # per status read (Search, each ByIds batch)


class PublicWorksConfig(AdapterConfig):
    base_url: str = Field(description="Cityworks site root, e.g. https://cw.example.gov/cityworks")
    login_name: str = Field(description="Cityworks service account")
    password: SecretStr = Field(description="from {env: VAR} or {file: /path} only")
    token_refresh_margin_seconds: float = Field(
        default=60.0, ge=0, description="log in again this long before the token expires"
    )
    timezone: str = Field(
        default="America/New_York", description="zone of the install's naive timestamps"
    )
    auth_path: str = Field(
        default="/Services/General/Authentication/Authenticate",
        description="older sites: /Services/authentication/authenticate",
    )
    batch_size: int = Field(default=200, ge=1, le=1000, description="RequestIds per ByIds call")
    max_changes_per_poll: int = Field(
        default=2000,
        ge=1,
        description="more changed requests than this are read a time window per page; "
        "the changes of a single second are read whole",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlparse(value).scheme not in ("http", "https") or not urlparse(value).netloc:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class PublicWorksAdapter(Adapter):
    name = "publicworks"
    transport = "http"
    config_model = PublicWorksConfig
    description = "Public works service requests (Trimble Cityworks Services API)"
    capabilities = frozenset(
        {
            Capability.CREATE,
            Capability.FIND_BY_REFERENCE,
            Capability.ADD_NOTE,
            Capability.ATTACH,
            Capability.CANCEL,
            Capability.STATUS_POLL,
        }
    )

    def __init__(self, config: PublicWorksConfig, *, department: str | None = None) -> None:
        super().__init__(config, department=department)
        self.config: PublicWorksConfig = config
        self.zone = ZoneInfo(config.timezone)
        self.client = CityworksClient(
            base_url=config.base_url,
            login_name=config.login_name,
            password=config.password,
            timeout=config.timeout_seconds,
            zone=self.zone,
            refresh_margin_seconds=config.token_refresh_margin_seconds,
            auth_path=config.auth_path,
            label=self.department,
        )

    def status_codes(self) -> set[str]:
        return set(STATUS_CODES)

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- work orders --------------------------------------------------------------

    async def create(self, order: OutboundWorkOrder) -> ExternalRef:
        data = dict(order.payload)
        data["OtherSystemId"] = order.hub_id  # always ours: it is how we find it again
        if not data.get("ProblemCode") and order.work_order_type:
            data["ProblemCode"] = order.work_order_type
        value = await self.client.call(SR + "Create", data, idempotent=False)
        return self._ref(SR + "Create", value)

    async def find_by_reference(self, hub_id: str) -> ExternalRef | None:
        value = await self.client.call(
            SR + "ByOtherSystemId", {"OtherSystemId": hub_id}, idempotent=True
        )
        return None if value is None else self._ref(SR + "ByOtherSystemId", value)

    async def add_note(self, external_id: str, note: OutboundNote) -> None:
        data = {"RequestId": _request_id(external_id), "Comments": note.text}
        await self.client.call(SR + "AddComments", data, idempotent=False)

    async def cancel(self, external_id: str, reason: str | None = None) -> None:
        rid = _request_id(external_id)
        data: dict[str, Any] = {"RequestIds": [rid]}
        if reason:
            data["CancelReason"] = reason
        try:
            await self.client.call(SR + "Cancel", data, idempotent=False)
        except RequestRefused as exc:
            # A retried cancel finds the request already cancelled: that is success.
            if CANT_CANCEL not in exc.codes or await self._raw_status(rid) != "Canceled":
                raise

    async def attach(self, external_id: str, attachment: Attachment) -> None:
        content, fetched_type = await self._read_evidence(attachment)
        if attachment.digest and Attachment.digest_of(content) != attachment.digest:
            raise Permanent(f"{self.department} attach: evidence digest mismatch")
        name = attachment.filename or Path(urlparse(attachment.url).path).name or "evidence"
        content_type = attachment.content_type or fetched_type or "application/octet-stream"
        data = {"RequestId": _request_id(external_id), "Comments": HUB_ATTACHMENT_NOTE}
        files = {"file": (name, content, content_type)}
        await self.client.call(ATTACH, data, idempotent=False, files=files)

    # -- status -------------------------------------------------------------------

    async def get_status(self, external_ids: list[str]) -> list[DepartmentEvent]:
        records = await self._by_ids([_request_id(i) for i in external_ids])
        return [self._event(r) for r in records]

    async def poll_changes(self, since: datetime) -> StatusPage:
        # Search is inclusive of DateModifiedBegin: the newest change of the last page comes
        # again, which the hub's dedup on external_event_id absorbs (a free overlap).
        begin = utc_to_local(since, self.zone)
        ids = await self._search(begin)
        if len(ids) <= self.config.max_changes_per_poll:
            events = await self._events(ids)
            watermark = max((e.occurred_at for e in events), default=since)
            return StatusPage(events=events, next_watermark=watermark)
        end, ids = await self._window(since, begin, len(ids))
        # Every change up to `end` is in this window or read again by the next one, which
        # begins at `end` itself (both bounds inclusive): `end` is safe to resume from.
        return StatusPage(events=await self._events(ids), next_watermark=end, more=True)

    async def _window(self, since: datetime, begin: str, total: int) -> tuple[datetime, list]:
        """A window [since, since + k s] (k whole seconds, up to now) whose Search holds at
        most the limit and at least 3/4 of it when it can, and its ids; a single second
        (k = 1) is taken however many it holds.

        Each probe is a Search, which lists every id in its window: the next k is
        interpolated from the counts seen (changes spread evenly between them), every
        other probe bisects so an uneven spread still converges in logarithmic time. Ends
        are whole UTC seconds: the next page's DateModifiedBegin, utc_to_local(end), is
        then exactly this page's DateModifiedEnd, even across a DST change, so consecutive
        windows always meet. Correctness does not need the counts to grow with k (naive
        local time repeats an hour at fall-back): any probed k that fits is a safe page."""
        start = (since if since.tzinfo else since.replace(tzinfo=UTC)).replace(microsecond=0)
        limit = self.config.max_changes_per_poll
        enough, aim = limit - limit // 4, limit - limit // 8
        span = max(1, int((datetime.now(UTC) - start).total_seconds()))
        # Widest k known to fit and its count; narrowest known not to (at first, past now,
        # where the open-ended Search counted `total`) and its count.
        fits, fits_n, over, over_n = 0, 0, span + 1, total
        fitting: list[Any] = []
        one_second: list[Any] = []
        k, probes = _between(fits, over, span * aim // total), 0
        while True:
            ids = await self._search(begin, utc_to_local(start + timedelta(seconds=k), self.zone))
            probes += 1
            if k == 1:
                one_second = ids
            if len(ids) <= limit:
                fits, fits_n, fitting = k, len(ids), ids
            else:
                over, over_n = k, len(ids)
            if over - fits <= 1 or fits == span or fits_n >= enough:
                break
            if probes % 2:  # interpolate: where `aim` changes would be, spread evenly
                k = _between(fits, over, fits + (aim - fits_n) * (over - fits) // (over_n - fits_n))
            else:
                k = (fits + over) // 2
        if not fits:  # a burst inside one second: read whole, the next page starts after it
            return start + timedelta(seconds=1), one_second
        return start + timedelta(seconds=fits), fitting

    async def _search(self, begin: str, end: str | None = None) -> list[Any]:
        data = {"DateModifiedBegin": begin}
        if end is not None:
            data["DateModifiedEnd"] = end
        value = await self._read(SR + "Search", data)
        if not isinstance(value, list):
            raise MalformedResponse(f"{self.department} {SR}Search: expected a list of ids")
        return value

    async def _events(self, ids: list[Any]) -> list[DepartmentEvent]:
        records = await self._by_ids(ids)
        return sorted((self._event(r) for r in records), key=lambda e: e.sequence or "")

    async def _by_ids(self, ids: list[Any]) -> list[dict[str, Any]]:
        size = self.config.batch_size
        records: list[dict[str, Any]] = []
        for start in range(0, len(ids), size):
            value = await self._read(SR + "ByIds", {"RequestIds": ids[start : start + size]})
            if not isinstance(value, list):
                raise MalformedResponse(f"{self.department} {SR}ByIds: expected a list")
            records.extend(r for r in value if isinstance(r, dict))
        return records

    async def _read(self, method: str, data: dict[str, Any]) -> Any:
        """A read, retried on a transient failure: a poll of many ByIds batches is all or
        nothing, so at a 20% failure rate 30 batches would almost never all succeed and the
        watermark would stop (the 10,000-case soak's stuck public-works closures)."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await self.client.call(method, data, idempotent=True)
            except Transient as error:
                if attempt == READ_ATTEMPTS:
                    raise
                await asyncio.sleep(min(error.retry_after or 0.2 * 2 ** (attempt - 1), 2.0))
        raise AssertionError("unreachable")

    async def _raw_status(self, rid: int) -> str | None:
        value = await self.client.call(SR + "ById", {"RequestId": rid}, idempotent=True)
        return value.get("Status") if isinstance(value, dict) else None

    # -- mapping the department's records ----------------------------------------

    def _ref(self, method: str, value: Any) -> ExternalRef:
        if not isinstance(value, dict) or value.get("RequestId") in (None, ""):
            raise MalformedResponse(f"{self.department} {method}: no RequestId in the answer")
        return ExternalRef(
            external_id=str(value["RequestId"]),
            raw_status=value.get("Status"),
            hub_reference=value.get("OtherSystemId"),
        )

    def _event(self, record: dict[str, Any]) -> DepartmentEvent:
        rid, status = record.get("RequestId"), record.get("Status")
        stamp = (
            record.get("DateTimeModified")
            or record.get("DateTimeClosed")
            or record.get("DateTimeInit")
        )
        occurred = parse_local(stamp, self.zone)
        if rid is None or not status or occurred is None:
            raise MalformedResponse(f"{self.department} request record lacks id/status/date")
        closed = status in ("Closed", "Canceled")
        sequence = occurred.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return DepartmentEvent(
            department=self.department,
            external_event_id=event_id(rid, status, sequence),
            external_id=str(rid),
            hub_reference=record.get("OtherSystemId"),
            raw_code=status,
            raw_text=status,
            occurred_at=occurred,
            sequence=sequence,
            closure_text=(record.get("Resolution") or record.get("CancelReason"))
            if closed
            else None,
            evidence=self._photos(record) if status == "Closed" else [],
        )

    def _photos(self, record: dict[str, Any]) -> list[Attachment]:
        photos = []
        for item in record.get("Attachments") or []:
            if not isinstance(item, dict) or not item.get("Url"):
                continue
            if item.get("Comments") == HUB_ATTACHMENT_NOTE:
                continue  # our own upload, not the crew's evidence
            url = str(item["Url"])
            photos.append(
                Attachment(
                    url=url
                    if urlparse(url).scheme
                    else self.config.base_url + "/" + url.lstrip("/"),
                    content_type=item.get("ContentType") or "application/octet-stream",
                    size=item.get("Size") if isinstance(item.get("Size"), int) else None,
                    filename=item.get("FileName"),
                )
            )
        return photos

    async def _read_evidence(self, attachment: Attachment) -> tuple[bytes, str | None]:
        parsed = urlparse(attachment.url)
        if parsed.scheme == "file":
            try:
                return await asyncio.to_thread(Path(unquote(parsed.path)).read_bytes), None
            except FileNotFoundError:
                raise Permanent(f"{self.department} attach: evidence file is gone") from None
            except OSError as exc:
                raise Transient(
                    f"{self.department} attach: evidence unreadable ({exc.strerror})"
                ) from None
        return await self.client.fetch(attachment.url)


def _between(low: int, high: int, value: int) -> int:
    """`value` moved strictly inside (low, high), which holds at least one integer."""
    return min(max(value, low + 1), high - 1)


def event_id(rid: Any, status: str, sequence: str) -> str:
    """One change = one (request, status, UTC instant of the modification): stable across
    polls. The instant, not the naive local stamp, so a stamp with an offset in fall-back's
    repeated hour (01:30-04:00 vs 01:30-05:00) is two changes, not one. Ids before this
    were ``{rid}:{status}:{naive local stamp}``: an upgrade sees each request's newest change
    once more under the new id, a repeated status that status sync records as a no-op."""
    return f"{rid}:{status}:{sequence}"


def _request_id(external_id: str) -> int:
    try:
        return int(external_id)
    except (TypeError, ValueError):
        raise Permanent(f"not a Cityworks RequestId: {external_id!r}") from None
