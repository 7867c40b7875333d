"""A hauling contractor that only exchanges CSV files, for tests, the demo and benchmarks.

It watches a drop directory (the layout of adapters/sanitation/files.py): takes each batch
in ``outbound/`` whose ``.sha256`` sidecar matches, moves it to ``taken/``, writes an
``ACK_<batch>.csv`` into ``inbound/``, and, as crews work (``advance``), writes
``COMPLETIONS_<stamp>.csv`` status files with the quirks of real file-drop feeds
(department-apis.md §4): overlapping windows (each file repeats the last 90 minutes of
rows), day-first dates, a banner line above the header in some files, columns reordered
per file, quoted and unquoted values mixed, zero-padded contractor refs.

Like a real contractor it does not deduplicate on CaseRef: a case sent twice becomes two
jobs, visible in ``duplicates`` and ``create_calls`` of ``/__sim__/state``.

Faults (FileFaultProfile): ``late_files`` (a file appears ``late_seconds`` later),
``bad_files`` (an HTML error page, a truncated upload or a headerless file instead),
``duplicate_files`` (the same bytes dropped again under a second name); over SFTP also
``error_5xx`` (operations fail) and ``timeout_after_commit`` (the sidecar rename — the
batch's commit — happens, then the answer hangs).

Control: the usual ``/__sim__/state|faults|advance|reset`` over HTTP (a Starlette app, no
department API: the drop is the API). Reading the state first processes the drop, so
tests see a deterministic contractor; :meth:`start_background` adds a polling thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import os
import random
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from pydantic import Field
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from hub.testing.simulators.base import HTML_ERROR_PAGE, BaseSimulator, Fault, FaultProfile

FOLDERS = ("outbound", "taken", "inbound", "archive", "quarantine", "ledger", "index")
STATUS_COLUMNS = ["CaseRef", "ContractorRef", "Status", "ReasonCode", "CompletedAt", "Crew",
                  "Notes", "PhotoUrl"]  # fmt: skip
DONE_BY_TYPE = {"MT": "COLLECTED", "MR": "COLLECTED", "BK": "COLLECTED", "CR": "DELIVERED",
                "ID": "CLEANED"}  # fmt: skip
NEXT = {"RECEIVED": "SCHEDULED", "SCHEDULED": "DISPATCHED"}
FINAL = frozenset({"COLLECTED", "DELIVERED", "CLEANED", "NOT_OUT", "NO_MATERIAL"})
COULD_NOT = (("NOT_OUT", "NO-SETOUT", "Bins not at kerb by 07:00"),
             ("NO_MATERIAL", "NOTHING", "Nothing found at location"))  # fmt: skip
DEFAULT_USER, DEFAULT_PASSWORD = "hub", "hub-sim-password"
PASSWORD_ENV = "HUB_SIM_SANITATION_PASSWORD"
Probability = Field(default=0.0, ge=0.0, le=1.0)


class FileFaultProfile(FaultProfile):
    """The shared profile plus what goes wrong with files."""

    late_files: float = Probability
    late_seconds: float = Field(default=1.0, ge=0.0)
    bad_files: float = Probability
    duplicate_files: float = Probability
    could_not_complete: float = Field(default=0.1, ge=0.0, le=1.0)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        **FaultProfile.PRESETS,
        "flaky": {
            **FaultProfile.PRESETS["flaky"],
            "late_files": 0.1,
            "bad_files": 0.1,
            "duplicate_files": 0.1,
        },
    }


class SanitationSimulator(BaseSimulator):
    name = "sanitation"

    def __init__(
        self,
        directory: Path | str,
        faults: FaultProfile | str | dict[str, Any] | None = None,
        *,
        zone: str = "America/New_York",
        window_minutes: int = 90,
    ) -> None:
        super().__init__(None)
        self.root = Path(directory)
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.zone = ZoneInfo(zone)
        self.window = timedelta(minutes=window_minutes)
        self.set_faults(faults)
        self.sftp: SftpServerThread | None = None
        self._background: threading.Thread | None = None
        self._stop = threading.Event()
        self.clear()

    # -- faults -------------------------------------------------------------------

    def set_faults(self, faults: FaultProfile | str | dict[str, Any] | None) -> FaultProfile:
        if isinstance(faults, FaultProfile) and not isinstance(faults, FileFaultProfile):
            faults = faults.model_dump()
        profile = FileFaultProfile.coerce(faults)
        self.faults.set_profile(profile)
        self.rng = random.Random(profile.seed)
        return profile

    @property
    def profile(self) -> FileFaultProfile:
        profile = self.faults.profile
        assert isinstance(profile, FileFaultProfile)
        return profile

    def _chance(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability

    # -- state --------------------------------------------------------------------

    def clear(self) -> None:
        with self.lock:
            self.records: dict[str, dict[str, Any]] = {}
            # Jobs not yet done, oldest first: crews pick from these, not from every job a
            # long replay left here (pruned as they are met done).
            self.open_refs: dict[str, None] = {}
            self.create_calls: Counter[str] = Counter()
            self.rows: list[dict[str, str]] = []  # status rows of the current window
            self.files: Counter[str] = Counter()
            self.held: list[tuple[float, str, bytes]] = []  # late files: (due, name, bytes)
            self.next_ref = 560250  # zero-padded like Symology's CRNo 00560250

    def snapshot(self) -> dict[str, Any]:
        self.scan()
        with self.lock:
            per_reference = Counter(r["CaseRef"] for r in self.records.values())
            return {
                "department": self.name,
                "drop": str(self.root),
                "sftp_port": self.sftp.port if self.sftp else None,
                "records": [dict(r) for r in self.records.values()],
                "create_calls": dict(self.create_calls),
                "duplicates": {k: n for k, n in per_reference.items() if n > 1},
                "files": dict(self.files),
                "held": len(self.held),
            }

    def api_routes(self) -> list[BaseRoute]:
        return []  # the drop is the department's API

    def error_envelope(self) -> Response:
        return JSONResponse({"error": "not applicable to a file drop"}, status_code=400)

    # -- consuming batches ----------------------------------------------------------

    def scan(self) -> int:
        """Take every complete batch, answer with ACKs, release due late files."""
        taken = 0
        with self.lock:
            for name in sorted(os.listdir(self.root / "outbound")):
                if name.endswith(".csv") and not name.startswith(".") and self._take(name):
                    taken += 1
            self._release_due()
        return taken

    def _take(self, name: str) -> bool:
        outbound = self.root / "outbound"
        sidecar = outbound / f"{name}.sha256"
        try:
            data = (outbound / name).read_bytes()
            expected = sidecar.read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return False  # no sidecar yet: the hub has not committed this batch
        if hashlib.sha256(data).hexdigest() != expected:
            return False
        rows = list(csv.DictReader(io.StringIO(data.decode("windows-1252"), newline="")))
        acks = [self._job(row) for row in rows]
        for path in (outbound / name, sidecar):
            os.replace(path, self.root / "taken" / path.name)
        self.files["batches_taken"] += 1
        self._emit(f"ACK_{name.rpartition('.')[0]}.csv", acks)
        return True

    def _job(self, row: dict[str, str]) -> dict[str, str]:
        hub_id = row["CaseRef"]
        self.create_calls[hub_id] += 1
        ref = f"{self.next_ref:08d}"
        self.next_ref += 1
        self.open_refs[ref] = None
        self.records[ref] = {
            "ContractorRef": ref,
            "CaseRef": hub_id,
            "ServiceType": row.get("ServiceType", ""),
            "Status": "RECEIVED",
            "Address": row.get("Address", ""),
        }
        return self._status_row(self.records[ref], "ACK")

    # -- crews at work ----------------------------------------------------------------

    def advance(self, count: int, *, close: bool = False, **options: Any) -> list[dict]:
        """Progress (or close) up to `count` open jobs; write one status file."""
        self.scan()
        if options:
            raise TypeError(f"unknown options {sorted(options)}")
        changed: list[dict] = []
        with self.lock:
            open_jobs = []
            for ref in list(self.open_refs):
                record = self.records.get(ref)
                if record is None or record["Status"] in FINAL:
                    del self.open_refs[ref]
                    continue
                if len(open_jobs) == count:
                    break
                open_jobs.append(record)
            for record in open_jobs:
                self.rows.append(self._step(record, close))
                changed.append(dict(record))
            if changed:
                self._write_window()
        return changed

    def _step(self, record: dict[str, Any], close: bool) -> dict[str, str]:
        status = record["Status"]
        if close or status == "DISPATCHED":
            if self._chance(self.profile.could_not_complete):
                code, reason, note = self.rng.choice(COULD_NOT)
                record["Status"] = code
                return self._status_row(record, code, reason=reason, note=note)
            record["Status"] = DONE_BY_TYPE.get(record["ServiceType"], "COLLECTED")
            photo = f"https://photos.metrohauling.example/{record['ContractorRef']}.jpg"
            return self._status_row(record, record["Status"], photo=photo, note="Done")
        record["Status"] = NEXT.get(status, "DISPATCHED")
        return self._status_row(record, record["Status"])

    def _status_row(
        self, record: dict[str, Any], status: str, *, reason: str = "", note: str = "",
        photo: str = "",
    ) -> dict[str, str]:  # fmt: skip
        return {
            "CaseRef": record["CaseRef"],
            "ContractorRef": record["ContractorRef"],
            "Status": status,
            "ReasonCode": reason,
            "CompletedAt": datetime.now(self.zone).strftime("%d/%m/%Y %H:%M:%S"),
            "Crew": "Crew 7",
            "Notes": note,
            "PhotoUrl": photo,
            "_at": str(time.time()),
        }

    def _write_window(self) -> None:
        """An overlapping window: every row of the last `window` minutes (capped)."""
        horizon = time.time() - self.window.total_seconds()
        # Older rows are never written again: drop them, or a long demo grows forever.
        self.rows = [r for r in self.rows if float(r["_at"]) >= horizon]
        recent = self.rows[-2000:]
        stamp = datetime.now(self.zone).strftime("%Y%m%d_%H%M%S%f")
        self._emit(f"COMPLETIONS_{stamp}.csv", recent)

    # -- writing files, with the quirks and the faults ---------------------------------

    def _emit(self, name: str, rows: list[dict[str, str]]) -> None:
        data = self._render(rows)
        if self._chance(self.profile.bad_files):
            data = self._spoil(data)
        if self._chance(self.profile.late_files):
            self.held.append((time.time() + self.profile.late_seconds, name, data))
            self.files["late"] += 1
            return
        self._drop(name, data)
        if self._chance(self.profile.duplicate_files):
            self._drop(name.replace(".csv", "_resend.csv"), data)
            self.files["duplicate"] += 1

    def _render(self, rows: list[dict[str, str]]) -> bytes:
        columns = list(STATUS_COLUMNS)
        self.rng.shuffle(columns)  # column order varies per file
        lines = []
        if self.rng.random() < 0.3:  # a banner line above the header, as some exports have
            lines.append(f"Metro Hauling completions export,{datetime.now():%d/%m/%Y}")
        lines.append(",".join(self._quoted(c) for c in columns))
        lines += [",".join(self._quoted(row[c]) for c in columns) for row in rows]
        return ("\r\n".join(lines) + "\r\n").encode("windows-1252", errors="replace")

    def _quoted(self, value: str) -> str:
        # Mixed quoting: some values quoted, some not; quoting is forced where needed.
        if any(ch in value for ch in ',"\r\n') or self.rng.random() < 0.5:
            return '"' + value.replace('"', '""') + '"'
        return value

    def _spoil(self, data: bytes) -> bytes:
        self.files["bad"] += 1
        kind = self.files["bad"] % 3
        if kind == 1:
            return HTML_ERROR_PAGE.encode()
        if kind == 2:
            return data[: max(1, int(len(data) * 0.6))].rstrip(b"\r\n")  # cut mid-upload
        return b"Report failed\r\nplease contact support\r\n"

    def _drop(self, name: str, data: bytes) -> None:
        inbound = self.root / "inbound"
        temp = inbound / f".{name}.part"
        temp.write_bytes(data)
        os.replace(temp, inbound / name)
        self.files["written"] += 1

    def _release_due(self) -> None:
        now = time.time()
        due = [h for h in self.held if h[0] <= now]
        self.held = [h for h in self.held if h[0] > now]
        for _, name, data in due:
            self._drop(name, data)

    # -- background and SFTP --------------------------------------------------------

    def start_background(self, interval: float = 0.05) -> None:
        """Process the drop every `interval` seconds (CLI and demo; tests use state)."""
        if self._background is None:
            self._stop.clear()
            self._background = threading.Thread(
                target=self._loop, args=(interval,), daemon=True, name="sanitation-contractor"
            )
            self._background.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.scan()
            except Exception:  # a half-written file now is retried next tick
                continue

    def start_sftp(self, host_key: Path, *, port: int = 0) -> SftpServerThread:
        """Serve the drop over SFTP on 127.0.0.1 (user ``hub``, password from the env)."""
        if self.sftp is None:
            self.sftp = SftpServerThread(self, host_key, port=port).start()
        return self.sftp

    def stop(self) -> None:
        self._stop.set()
        if self._background is not None:
            self._background.join(timeout=5)
            self._background = None
        if self.sftp is not None:
            self.sftp.stop()
            self.sftp = None


# --------------------------------------------------------------------------- SFTP


def make_host_key(path: Path) -> str:
    """A throwaway ed25519 host key at `path`; returns the public key line."""
    import asyncssh

    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(path))
    return asyncssh.read_private_key(str(path)).export_public_key().decode().strip()


class SftpServerThread:
    """asyncssh SFTP server for the simulator's drop, in its own thread and event loop."""

    def __init__(self, simulator: SanitationSimulator, host_key: Path, *, port: int = 0) -> None:
        self.simulator = simulator
        self.host_key_path = host_key
        self.public_key = make_host_key(host_key)
        self.port = port
        self.host = "127.0.0.1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="sanitation-sftp")  # fmt: skip
        self._server: Any = None

    def start(self) -> SftpServerThread:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self._server = future.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _listen(self) -> Any:
        import asyncssh

        simulator = self.simulator
        password = os.environ.get(PASSWORD_ENV, DEFAULT_PASSWORD)

        class Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, given: str) -> bool:
                return username == DEFAULT_USER and given == password

        def sftp_factory(chan: Any) -> asyncssh.SFTPServer:
            return _FaultySftp(chan, simulator)

        return await asyncssh.listen(
            self.host,
            self.port,
            server_host_keys=[str(self.host_key_path)],
            server_factory=Server,
            sftp_factory=sftp_factory,
        )

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _close(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:  # open sessions: end them, so nothing is destroyed pending
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _faulty_sftp_class() -> type:
    import asyncssh

    class FaultySftp(asyncssh.SFTPServer):
        """The drop, chrooted, with the simulator's faults on the operations."""

        def __init__(self, chan: Any, simulator: SanitationSimulator) -> None:
            super().__init__(chan, chroot=str(simulator.root).encode())
            self.simulator = simulator

        def _fail(self) -> None:
            if self.simulator.faults.draw(frozenset({Fault.ERROR_5XX})) is Fault.ERROR_5XX:
                raise asyncssh.SFTPFailure("server error, try again later")

        def open(self, path: bytes, pflags: int, attrs: Any) -> Any:
            self._fail()
            return super().open(path, pflags, attrs)

        async def scandir(self, path: bytes) -> Any:
            self._fail()
            async for name in super().scandir(path):
                yield name

        async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
            super().posix_rename(oldpath, newpath)
            await self._maybe_hang(newpath)

        async def rename(self, oldpath: bytes, newpath: bytes) -> None:
            super().rename(oldpath, newpath)
            await self._maybe_hang(newpath)

        async def _maybe_hang(self, newpath: bytes) -> None:
            # The sidecar is a batch's commit: it happens, then the answer is lost.
            if not newpath.endswith(b".sha256"):
                return
            kind = Fault.TIMEOUT_AFTER_COMMIT
            if self.simulator.faults.draw(frozenset({kind})) is kind:
                await asyncio.sleep(self.simulator.faults.profile.hang_seconds)

    return FaultySftp


def _FaultySftp(chan: Any, simulator: SanitationSimulator) -> Any:
    global _SFTP_CLASS
    if _SFTP_CLASS is None:
        _SFTP_CLASS = _faulty_sftp_class()
    return _SFTP_CLASS(chan, simulator)


_SFTP_CLASS: type | None = None


# --------------------------------------------------------------------------- CLI


def main(
    directory: Path, *, port: int = 8083, host: str = "127.0.0.1", faults: str = "none",
    sftp_port: int | None = None,
) -> None:  # fmt: skip
    """Standalone contractor (``hub simulate sanitation --dir PATH``); blocks serving."""
    from hub.testing.simulators.base import serve_forever

    simulator = SanitationSimulator(directory, faults=faults)
    simulator.start_background()
    if sftp_port is not None:
        server = simulator.start_sftp(Path(directory) / "sim_host_key", port=sftp_port)
        print(f"SFTP on {server.host}:{server.port} user {DEFAULT_USER}; host key:")
        print(f"  {server.public_key}")
    serve_forever(simulator, host=host, port=port)
