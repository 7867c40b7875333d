"""How the hub's conformance kit drives the sanitation adapter: the contractor simulator
served over a real SFTP server on loopback (throwaway host key), so credentials, host-key
checks and SFTP failures are exercised too. Test-only (imports the simulator)."""

from __future__ import annotations

import atexit
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from adapters.sanitation.adapter import SanitationAdapter
from adapters.sanitation.files import OUTBOUND, QUARANTINE, SIDECAR, TAKEN, sha256
from hub.adapters import OutboundWorkOrder
from hub.model import Case
from hub.testing.conformance import AdapterHarness, ConformanceKit
from hub.testing.harness import REPO_MAPPINGS
from hub.testing.simulators.sanitation import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    PASSWORD_ENV,
    SanitationSimulator,
)

NOT_A_REQUEST = "a file drop has no request/response; "


class SimulatedCrash(BaseException):
    """kill -9 stand-in: not an Exception, so nothing on the way catches it."""


class SanitationHarness(AdapterHarness):
    department = "sanitation"
    env = {PASSWORD_ENV: DEFAULT_PASSWORD}
    mappings = REPO_MAPPINGS
    not_applicable = {
        "test_429_is_transient_with_retry_after": NOT_A_REQUEST + "SFTP has no rate-limit answer",
        "test_malformed_answer_is_malformed_response": NOT_A_REQUEST
        + "malformed inbound files are quarantined (test_file_exchange_quarantines_…)",
        "test_error_envelope_is_not_success": NOT_A_REQUEST + "there is no envelope",
    }

    def __init__(self) -> None:
        self.sim: SanitationSimulator | None = None

    def simulator(self) -> SanitationSimulator:
        root = Path(tempfile.mkdtemp(prefix="sanitation-conformance-"))
        self.sim = SanitationSimulator(root / "drop")
        self.sim.start_sftp(root / "host_key")
        atexit.register(self.sim.stop)
        return self.sim

    def settings(self, url: str) -> dict[str, Any]:
        assert self.sim is not None and self.sim.sftp is not None
        return {
            "drop": "sftp",
            "path": "/",
            "host": "127.0.0.1",
            "port": self.sim.sftp.port,
            "username": DEFAULT_USER,
            "password": {"env": PASSWORD_ENV},
            "host_key": self.sim.sftp.public_key,
            "mappings_dir": str(REPO_MAPPINGS),
            "batch_max_wait_seconds": 0.02,
            "pending_grace_seconds": 2.0,
        }

    def sample_case(self, source_id: str) -> Case:
        return Case(
            source_system="conformance",
            source_id=source_id,
            service_code="MISSEDTR",
            service_name="Missed trash pickup",
            description="Bins out since 6am, truck passed by",
            address_string="88 Elm St",
            lat=42.35,
            long=-71.06,
        )

    def invalid_order(self, hub_id: str) -> OutboundWorkOrder:
        # The contractor takes only the service types of its contract (MT, MR, BK, CR, ID).
        return OutboundWorkOrder(
            hub_id=hub_id,
            department=self.department,
            work_order_type="POTHOLE",
            payload={"Address": "88 Elm St"},
        )

    def count_records(self, state: dict[str, Any], hub_id: str) -> int:
        return sum(1 for record in state["records"] if record["CaseRef"] == hub_id)

    # -- file exchange -----------------------------------------------------------

    def _root(self) -> Path:
        assert self.sim is not None
        return self.sim.root

    def outbound_files(self, kit: ConformanceKit) -> dict[str, bytes]:
        files = {}
        for folder in (OUTBOUND, TAKEN):
            for path in (self._root() / folder).glob("*.csv"):
                try:
                    files[path.name] = path.read_bytes()
                except FileNotFoundError:
                    continue  # taken by the contractor between listing and reading
        return files

    def batch_is_complete(self, kit: ConformanceKit, name: str, data: bytes) -> bool:
        # Under its final name a batch must be whole: header line first, CRLF at the end,
        # and — once its sidecar exists — exactly the bytes the sidecar vouches for.
        if not data.startswith(b'"CaseRef"') or not data.endswith(b"\r\n"):
            return False
        for folder in (OUTBOUND, TAKEN):
            sidecar = self._root() / folder / (name + SIDECAR)
            if sidecar.exists():
                return sidecar.read_text().split()[0] == sha256(data)
        return True

    async def crash_mid_batch(self, kit: ConformanceKit, orders: list[OutboundWorkOrder]) -> None:
        adapter = kit.build()
        assert isinstance(adapter, SanitationAdapter)
        write = adapter.drop.write_atomic

        async def dying(folder: str, name: str, data: bytes) -> None:
            if name.endswith(SIDECAR):  # the batch file is renamed into place: die now
                raise SimulatedCrash
            await write(folder, name, data)

        adapter.drop.write_atomic = dying  # type: ignore[method-assign]
        try:
            for order in orders:
                with contextlib.suppress(SimulatedCrash):
                    await adapter.create(order)
        finally:
            await adapter.aclose()

    def drop_inbound(self, kit: ConformanceKit, name: str, data: bytes) -> None:
        (self._root() / "inbound" / name).write_bytes(data)

    def inbound_file(self, kit: ConformanceKit, hub_id: str) -> tuple[str, bytes]:
        body = (
            "CompletedAt,Status,CaseRef,ContractorRef,ReasonCode,Notes,PhotoUrl\r\n"
            f'"03/02/2026 09:15",COLLECTED,"{hub_id}",00560250,,"Bins, both",'
            "https://photos.example/1.jpg\r\n"
        )
        return "COMPLETIONS_20260203_0930.csv", body.encode("windows-1252")

    def quarantined(self, kit: ConformanceKit) -> dict[str, str]:
        folder = self._root() / QUARANTINE
        reasons = {}
        for path in folder.glob("*.reason.txt"):
            reason = path.read_text().splitlines()[0].removeprefix("reason: ")
            reasons[path.name.removesuffix(".reason.txt")] = reason
        return reasons
