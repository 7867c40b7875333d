"""Where batch files go: a local directory or an SFTP server (asyncssh), same folders.

Both implement :class:`DropLocation`. File names are never trusted as paths: every name
is checked by :func:`safe_name` (one path component, no traversal, no control
characters) before it is joined to a folder, and folders are a fixed set (plus the day
folders of ``archive/`` and the bucket folders of ``index/``, by pattern: files.NESTED).

``write_atomic`` is the only way a file appears: temporary dot-name ``.<name>.<rand>.part``
(contractors pick ``*.csv``; dot-files are in progress), fsync, rename to the final name,
fsync of the directory (local) — so no reader ever sees a partial file under its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any, Protocol

from hub.adapters import AuthFailed, Transient

from .files import FOLDERS, nested

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]{0,199}$")


class UnsafeName(ValueError):
    """A file name that could escape its folder or confuse a shell or an importer."""


def safe_name(name: str) -> str:
    if not isinstance(name, str) or not _SAFE.match(name) or ".." in name:
        raise UnsafeName(f"unsafe file name {name!r}")
    return name


def _folder(folder: str) -> str:
    if folder in FOLDERS:
        return folder
    parent, _, child = folder.partition("/")
    try:
        return nested(parent, child)
    except ValueError:
        raise UnsafeName(f"unknown drop folder {folder!r}") from None


def part_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:8]}.part"


class DropLocation(Protocol):
    """The drop as the adapter sees it. Errors are the hub's classified ones."""

    label: str

    async def ensure_folders(self) -> None: ...
    async def ensure_folder(self, folder: str) -> None: ...
    async def list(self, folder: str) -> list[str]: ...
    async def subfolders(self, folder: str) -> list[str]: ...
    async def exists(self, folder: str, name: str) -> bool: ...
    async def read(self, folder: str, name: str) -> bytes | None: ...
    async def write_atomic(self, folder: str, name: str, data: bytes) -> None: ...
    async def move(self, folder: str, name: str, to_folder: str, to_name: str) -> None: ...
    async def remove(self, folder: str, name: str) -> None: ...
    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- local


class LocalDirectory:
    """A directory on this machine (or a mounted share). Blocking calls run in a thread."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.label = f"dir:{self.root}"

    def _path(self, folder: str, name: str | None = None) -> Path:
        base = self.root / _folder(folder)
        return base if name is None else base / safe_name(name)

    async def ensure_folders(self) -> None:
        await asyncio.to_thread(self._ensure)

    def _ensure(self) -> None:
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    async def ensure_folder(self, folder: str) -> None:
        path = self._path(folder)
        try:
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise Transient(f"{self.label}: cannot make {folder} ({exc.strerror})") from None

    async def list(self, folder: str) -> list[str]:
        return await asyncio.to_thread(self._list, folder, False)

    async def subfolders(self, folder: str) -> list[str]:
        return await asyncio.to_thread(self._list, folder, True)

    def _list(self, folder: str, folders: bool) -> list[str]:
        try:
            with os.scandir(self._path(folder)) as entries:
                return sorted(e.name for e in entries if (e.is_dir() if folders else e.is_file()))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise Transient(f"{self.label}: cannot list {folder} ({exc.strerror})") from None

    async def exists(self, folder: str, name: str) -> bool:
        return await asyncio.to_thread(self._exists, folder, name)

    def _exists(self, folder: str, name: str) -> bool:
        try:
            return self._path(folder, name).is_file()
        except OSError as exc:
            raise Transient(f"{self.label}: cannot stat {name} ({exc.strerror})") from None

    async def read(self, folder: str, name: str) -> bytes | None:
        return await asyncio.to_thread(self._read, folder, name)

    def _read(self, folder: str, name: str) -> bytes | None:
        try:
            return self._path(folder, name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Transient(f"{self.label}: cannot read {name} ({exc.strerror})") from None

    async def write_atomic(self, folder: str, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_atomic, folder, name, data)

    def _write_atomic(self, folder: str, name: str, data: bytes) -> None:
        final = self._path(folder, name)
        temp = final.with_name(part_name(name))
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)  # the bytes are on disk before the name points at them
            finally:
                os.close(fd)
            os.replace(temp, final)
            _fsync_dir(final.parent)  # ... and the rename itself survives a power cut
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise Transient(f"{self.label}: cannot write {name} ({exc.strerror})") from None

    async def move(self, folder: str, name: str, to_folder: str, to_name: str) -> None:
        await asyncio.to_thread(self._move, folder, name, to_folder, to_name)

    def _move(self, folder: str, name: str, to_folder: str, to_name: str) -> None:
        # `name` comes from a listing, so it is one component; it may still be unsafe
        # (a contractor's odd name), which is why only the destination must be safe.
        source = self._path(folder) / Path(name).name
        target = self._path(to_folder, to_name)
        try:
            os.replace(source, target)
            _fsync_dir(target.parent)
        except FileNotFoundError:
            return  # another worker moved it first
        except OSError as exc:
            raise Transient(f"{self.label}: cannot move {to_name} ({exc.strerror})") from None

    async def remove(self, folder: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread((self._path(folder) / Path(name).name).unlink)

    async def aclose(self) -> None:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- sftp


class Sftp:
    """A folder on an SFTP server, through one asyncssh connection per event loop.

    The host key is always verified (``host_key`` line or a ``known_hosts`` file): a file
    drop that accepts any server would hand residents' addresses to whoever answers.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        root: str,
        password: str | None = None,
        private_key: str | None = None,
        passphrase: str | None = None,
        host_key: str | None = None,
        known_hosts: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.username = host, port, username
        self.root = root.rstrip("/")  # "/" (a chrooted account) becomes "": paths "/outbound"
        self.label = f"sftp://{username}@{host}:{port}/{self.root.lstrip('/')}"
        self._password, self._private_key, self._passphrase = password, private_key, passphrase
        self._host_key, self._known_hosts = host_key, known_hosts
        self.timeout = timeout
        self._conn: Any = None
        self._sftp: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def _path(self, folder: str, name: str | None = None) -> str:
        base = f"{self.root}/{_folder(folder)}"
        return base if name is None else f"{base}/{safe_name(name)}"

    # -- connection ---------------------------------------------------------------

    def _known(self) -> Any:
        import asyncssh

        if self._known_hosts:
            return self._known_hosts
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return asyncssh.import_known_hosts(f"{host} {self._host_key}\n")

    def _client_keys(self) -> list[Any] | None:
        import asyncssh

        if not self._private_key:
            return None
        try:
            return [asyncssh.import_private_key(self._private_key, self._passphrase)]
        except (asyncssh.KeyImportError, ValueError):
            # Never echo the key text: name the problem only.
            raise AuthFailed(f"{self.label}: the private key cannot be read") from None

    async def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests, CLI): old objects are dead
            self._conn = self._sftp = None
            self._loop, self._lock = loop, asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            if self._sftp is None:
                await self._connect()
        return self._sftp

    async def _connect(self) -> None:
        import asyncssh

        try:
            self._conn = await asyncio.wait_for(
                asyncssh.connect(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self._password,
                    client_keys=self._client_keys(),
                    passphrase=None,
                    known_hosts=self._known(),
                    agent_path=None,
                    config=None,
                ),
                self.timeout,
            )
            self._sftp = await asyncio.wait_for(self._conn.start_sftp_client(), self.timeout)
        except asyncssh.PermissionDenied:
            raise AuthFailed(f"{self.label}: login refused") from None
        except asyncssh.HostKeyNotVerifiable:
            raise AuthFailed(f"{self.label}: host key does not match the configured one") from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise Transient(f"{self.label}: cannot connect ({type(exc).__name__})") from None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._sftp = None

    async def _run(self, what: str, op: Any) -> Any:
        """Run one SFTP operation with the timeout; classify its failure."""
        import asyncssh

        sftp = await self._client()
        try:
            return await asyncio.wait_for(op(sftp), self.timeout)
        except asyncssh.SFTPNoSuchFile:
            raise FileNotFoundError(what) from None
        except asyncssh.SFTPPermissionDenied:
            raise AuthFailed(f"{self.label}: {what}: permission denied") from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            lost = isinstance(exc, TimeoutError | OSError | asyncssh.SFTPConnectionLost) or not (
                isinstance(exc, asyncssh.SFTPError)
            )
            if lost and self._sftp is sftp:  # not a newer connection another call opened
                self._drop_connection()  # the next call reconnects
            raise Transient(f"{self.label}: {what} failed ({type(exc).__name__})") from None

    # -- operations ---------------------------------------------------------------

    async def ensure_folders(self) -> None:
        for folder in FOLDERS:
            path = self._path(folder)
            with contextlib.suppress(FileNotFoundError):
                if await self._run(f"stat {folder}", lambda s, p=path: s.isdir(p)):
                    continue
            await self._run(f"mkdir {folder}", lambda s, p=path: s.makedirs(p, exist_ok=True))

    async def ensure_folder(self, folder: str) -> None:
        path = self._path(folder)
        await self._run(f"mkdir {folder}", lambda s: s.makedirs(path, exist_ok=True))

    async def list(self, folder: str) -> list[str]:
        try:
            names = await self._run(f"list {folder}", lambda s: s.listdir(self._path(folder)))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n not in (".", ".."))

    async def subfolders(self, folder: str) -> list[str]:
        path = self._path(folder)
        try:
            entries = await self._run(f"list {folder}", lambda s: s.readdir(path))
        except FileNotFoundError:
            return []
        return sorted(
            e.filename
            for e in entries
            if e.filename not in (".", "..") and stat.S_ISDIR(e.attrs.permissions or 0)
        )

    async def exists(self, folder: str, name: str) -> bool:
        path = self._path(folder, name)
        return bool(await self._run(f"stat {name}", lambda s: s.isfile(path)))

    async def read(self, folder: str, name: str) -> bytes | None:
        path = self._path(folder, name)

        async def op(sftp: Any) -> bytes:
            async with sftp.open(path, "rb") as handle:
                return await handle.read()

        try:
            return await self._run(f"read {name}", op)
        except FileNotFoundError:
            return None

    async def write_atomic(self, folder: str, name: str, data: bytes) -> None:
        import asyncssh

        final = self._path(folder, name)
        temp = f"{self._path(folder)}/{part_name(name)}"  # `name` was checked just above

        async def upload(sftp: Any) -> None:
            async with sftp.open(temp, "wb") as handle:
                await handle.write(data)
                with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                    await handle.fsync()  # fsync@openssh.com, where the server has it

        await self._run(f"write {name}", upload)
        await self._run(f"rename {name}", lambda s: _rename(s, temp, final))

    async def move(self, folder: str, name: str, to_folder: str, to_name: str) -> None:
        source = f"{self._path(folder)}/{name.rpartition('/')[2]}"
        target = self._path(to_folder, to_name)
        with contextlib.suppress(FileNotFoundError):
            await self._run(f"move {to_name}", lambda s: _rename(s, source, target))

    async def remove(self, folder: str, name: str) -> None:
        path = f"{self._path(folder)}/{name.rpartition('/')[2]}"
        with contextlib.suppress(FileNotFoundError):
            await self._run(f"remove {name}", lambda s: s.remove(path))

    async def aclose(self) -> None:
        conn = self._conn
        self._drop_connection()
        if conn is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await conn.wait_closed()


async def _rename(sftp: Any, source: str, target: str) -> None:
    import asyncssh

    # posix-rename replaces atomically; plain SFTP rename refuses an existing target.
    try:
        await sftp.posix_rename(source, target)
    except asyncssh.SFTPOpUnsupported:
        await sftp.rename(source, target)
