"""The compacted sent-ledger: which batch row each hub id went out as, long after the fact.

``ledger/`` holds one JSON per batch while batches are young (see files.LedgerEntry). Once
settled, a batch's sent rows are folded in here and its ledger file is removed, so the
ledger stays as small as a day of batches and no process keeps every hub id in memory.

Layout: ``index/<bb>/SEG_<stamp>_<tag>_<count>.json`` — ``bb`` is :func:`bucket_of` the hub
id (256 buckets), each segment a JSON object ``{"refs": {hub id: external id}}``. A lookup
lists one bucket and reads its segments, newest first, so its cost is one bucket's share
of the history, never the whole of it.

Segments are immutable and every writer only adds: folding writes a new segment holding
the union of the new rows and of the newest segments that are not much larger
(``FOLD_RATIO``), and only then removes the segments it read. Two workers folding the same
bucket at once both keep every row (a row may sit in two segments for a while); nobody
ever removes a row it has not written elsewhere first. Sizes so grow geometrically from
newest to oldest: a bucket holds about log4(its rows) segments.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from hub.adapters import Permanent, Transient

from .drops import DropLocation
from .files import INDEX, bucket_of, nested

FOLD_RATIO = 4  # an older segment joins the fold unless it is 4x larger than the fold so far
ENTRIES_CACHED = 50_000  # rows of segments kept parsed per process (segments never change)
LOOKUP_TRIES = 3  # a segment folded away between listing and reading: list again
_SEGMENT = re.compile(r"^SEG_([0-9]{8}T[0-9]{12}Z)_([0-9a-f]{8})_([0-9]+)\.json$")


@dataclass(frozen=True, order=True)
class Segment:
    stamp: str  # when it was written (UTC, sortable)
    tag: str  # random: two writers in one microsecond still differ
    count: int  # rows it holds (the fold rule reads sizes from names, not files)

    @property
    def name(self) -> str:
        return f"SEG_{self.stamp}_{self.tag}_{self.count}.json"

    @classmethod
    def parse(cls, name: str) -> Segment | None:
        match = _SEGMENT.match(name)
        return cls(match[1], match[2], int(match[3])) if match else None

    @classmethod
    def new(cls, count: int) -> Segment:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return cls(stamp, uuid.uuid4().hex[:8], count)


class LedgerIndex:
    """Lookups and folds over ``index/`` on a drop; a bounded cache of parsed segments."""

    def __init__(self, drop: DropLocation, *, entries_cached: int = ENTRIES_CACHED) -> None:
        self.drop = drop
        self.entries_cached = entries_cached
        self._cache: OrderedDict[str, dict[str, str]] = OrderedDict()  # folder/name → refs
        self._cached_rows = 0
        self._made: set[str] = set()  # bucket folders known to exist (at most 256)

    @property
    def cached_rows(self) -> int:
        return self._cached_rows

    # -- lookups ---------------------------------------------------------------------

    async def lookup(self, hub_ids: Iterable[str]) -> dict[str, str]:
        """External ids of those hub ids the index holds (absent: not in any segment)."""
        by_bucket: dict[str, set[str]] = defaultdict(set)
        for hub_id in hub_ids:
            by_bucket[bucket_of(hub_id)].add(hub_id)
        found: dict[str, str] = {}
        for bucket, wanted in sorted(by_bucket.items()):
            found.update(await self._lookup_bucket(nested(INDEX, bucket), wanted))
        return found

    async def _lookup_bucket(self, folder: str, wanted: set[str]) -> dict[str, str]:
        for _ in range(LOOKUP_TRIES):
            found: dict[str, str] = {}
            for segment in await self._segments(folder):  # newest first: newer rows win
                refs = await self._read(folder, segment)
                if refs is None:
                    break  # folded into a newer segment meanwhile: list again
                found.update({h: refs[h] for h in wanted - found.keys() if h in refs})
                if len(found) == len(wanted):
                    return found
            else:
                return found
        raise Transient(f"index {folder} changed under {LOOKUP_TRIES} lookups in a row")

    async def _segments(self, folder: str) -> list[Segment]:
        names = await self.drop.list(folder)
        return sorted((s for s in map(Segment.parse, names) if s), reverse=True)

    async def _read(self, folder: str, segment: Segment) -> dict[str, str] | None:
        key = f"{folder}/{segment.name}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        data = await self.drop.read(folder, segment.name)
        if data is None:
            return None
        try:
            refs = json.loads(data)["refs"]
            if not isinstance(refs, dict):
                raise TypeError("refs is not an object")
        except (ValueError, KeyError, TypeError) as error:
            # A lookup that skipped it could answer "never sent" for a sent case: refuse.
            raise Permanent(f"index segment {key} is unreadable ({error})") from None
        self._keep(key, refs)
        return refs

    def _keep(self, key: str, refs: dict[str, str]) -> None:
        self._cache[key] = refs
        self._cached_rows += len(refs)
        while self._cached_rows > self.entries_cached and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_rows -= len(dropped)

    def _forget(self, key: str) -> None:
        dropped = self._cache.pop(key, None)
        self._cached_rows -= len(dropped or ())

    # -- folding ---------------------------------------------------------------------

    async def add(self, refs: dict[str, str]) -> int:
        """Make `refs` (hub id → external id) findable; returns the segments written.
        Returns only once every bucket holds its rows: the caller may then drop its copy."""
        by_bucket: dict[str, dict[str, str]] = defaultdict(dict)
        for hub_id, external_id in refs.items():
            by_bucket[bucket_of(hub_id)][hub_id] = external_id
        for bucket, rows in sorted(by_bucket.items()):
            await self._fold(nested(INDEX, bucket), rows)
        return len(by_bucket)

    async def _fold(self, folder: str, rows: dict[str, str]) -> None:
        if folder not in self._made:
            await self.drop.ensure_folder(folder)
            self._made.add(folder)
        inputs, size = [], len(rows)
        for segment in await self._segments(folder):  # newest first
            if segment.count > FOLD_RATIO * size:
                break  # this and older ones are large: leave them (writes stay geometric)
            inputs.append(segment)
            size += segment.count
        merged: dict[str, str] = {}
        read = []
        for segment in reversed(inputs):  # oldest first, so newer rows overwrite
            refs = await self._read(folder, segment)
            if refs is not None:  # None: another worker folded it; its segment has the rows
                merged.update(refs)
                read.append(segment)
        merged.update(rows)
        output = Segment.new(len(merged))
        body = json.dumps({"refs": merged}, sort_keys=True, separators=(",", ":"))
        await self.drop.write_atomic(folder, output.name, body.encode())
        for segment in read:  # only now: every row they held is in `output`
            await self.drop.remove(folder, segment.name)
            self._forget(f"{folder}/{segment.name}")
