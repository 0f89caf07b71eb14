"""MongoDB persistence: batched, unordered inserts through PyMongo's async API.

Workers hand documents over with `add()`, which never waits. One flusher task writes them
in `insert_many(ordered=False)` batches after a short linger, so a trickle still batches and
a burst fills whole batches. Each document's `_id` is its message's content identity, so the
unique `_id` index makes a redelivered message a harmless duplicate-key error (code 11000).

Only after MongoDB acknowledges a batch are its idempotency marks set to done. A transient
error (network, server selection, a restart) keeps the batch buffered and retries it with
backoff; the buffer is bounded in documents and in bytes (BSON plus the raw payload kept
for the dead letter), and what overflows is dead-lettered with its raw payload. Below those
bounds, `room()` lets the workers wait for a writer that is writing but falling behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, cast

import bson
import structlog
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from enricher.backoff import Backoff
from enricher.deadletter import DeadLetters
from enricher.errors import is_transient
from enricher.histograms import MONGO_BATCH_SIZE, MONGO_WRITE
from enricher.metrics import Metrics
from enricher.redact import redact_text
from enricher.source import Receipt

log = structlog.get_logger("enricher.store")

TICKS: Final = "underlying_ticks"
QUOTES: Final = "option_quotes"
CHAINS: Final = "option_chains"
CANDLES: Final = "ohlc_candles"  # closed candles (new; not in the old service)
SURFACES: Final = "volatility_surfaces"  # surface snapshots, at most one per interval per product

# CONTRACT.md §5: the indexes the readers rely on. `_id` (the identity) is the unique one.
INDEXES: Final[dict[str, list[IndexModel]]] = {
    TICKS: [
        IndexModel([("product", ASCENDING), ("timestamp", DESCENDING)]),
        IndexModel([("timestamp", DESCENDING)]),
    ],
    QUOTES: [
        IndexModel([("symbol", ASCENDING), ("timestamp", DESCENDING)]),
        IndexModel([("product", ASCENDING), ("timestamp", DESCENDING)]),
    ],
    CHAINS: [IndexModel([("product", ASCENDING), ("expiry", ASCENDING), ("timestamp", DESCENDING)])],
    CANDLES: [
        IndexModel([("product", ASCENDING), ("window_minutes", ASCENDING), ("start_time", ASCENDING)], unique=True)
    ],
    SURFACES: [IndexModel([("product", ASCENDING), ("timestamp", DESCENDING)])],
}
DUPLICATE_KEY: Final = 11000


@dataclass(frozen=True, slots=True)
class Pending:
    doc: Mapping[str, Any]  # a dict from the pipeline; RawBSONDocument once in the store's buffer
    mark: str  # the idempotency key to set done once stored
    channel: str
    raw: bytes  # kept so an overflow or a permanent error can be dead-lettered for replay
    receipt: Receipt | None = None  # the source's, settled once the document is stored


OnDurable = Callable[[Sequence[str]], Awaitable[None]]


class MongoStore:
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        metrics: Metrics,
        dead_letters: DeadLetters,
        on_durable: OnDurable,
        flush_interval: float,
        max_docs: int,
        buffer_max: int,
        buffer_max_bytes: int = 256 << 20,
        backpressure_bytes: int = 0,
        concurrency: int = 1,
        yield_to: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        self._yield_to = yield_to  # awaited before each background flush (priority.LiveFirst)
        self._metrics = metrics
        self._dead = dead_letters
        self._on_durable = on_durable
        self._interval = flush_interval
        self._max_docs = max_docs
        self._buffer_max = buffer_max
        self._buffer_max_bytes = buffer_max_bytes
        self._pending: dict[str, deque[Pending]] = {name: deque() for name in INDEXES}
        self._bytes = dict.fromkeys(INDEXES, 0)  # per collection, of what `_pending` holds
        self._backpressure_bytes = backpressure_bytes
        self._failing = False  # the last insert failed transiently (MongoDB away): no backpressure
        self._room = asyncio.Event()  # set while not `pressing`
        self._room.set()
        # One insert per collection at a time: batches stay in order, and SecantusDB was
        # seen to stop answering two concurrent inserts into one collection.
        self._writing = {name: asyncio.Lock() for name in INDEXES}
        # How many insert_many may run at once across collections. A single-node server
        # (SecantusDB measured 0.69x slower with three at once) wants 1; a cluster, more.
        self._inserting = asyncio.Semaphore(concurrency)
        self._size = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight: dict[int, list[Pending]] = {}  # batches handed to insert_many
        self._settled = asyncio.Event()  # set while nothing is in flight
        self._settled.set()
        self.indexes_ready = asyncio.Event()

    @property
    def buffered(self) -> int:
        return self._size

    @property
    def held(self) -> int:
        """Documents not stored yet: the buffered ones, and those of an insert still in flight."""
        return self._size + sum(len(batch) for batch in self._in_flight.values())

    @property
    def buffered_bytes(self) -> int:
        """Bytes the buffered documents hold: their BSON and their raw payloads."""
        return sum(self._bytes.values())

    @property
    def pressing(self) -> bool:
        """Whether the buffer holds more than the backpressure bound while MongoDB takes writes."""
        return 0 < self._backpressure_bytes < self.buffered_bytes and not self._failing

    async def room(self) -> None:
        """Until the writer is no longer `pressing`, for BACKPRESSURE_MAX_WAIT at most: what the
        chain and quote workers await before a batch, so a burst waits in the input queues as
        raw payloads alone, not here as raw payloads and their enriched BSON both.

        Never while MongoDB is failing, and never for long while it stalls (a failover takes
        seconds, and an insert is only failed after ENRICHER_MONGO_OP_TIMEOUT): the live
        outputs must go on, slowed at worst, and the buffer's bounds take over then.
        """
        if not self.pressing:
            return
        self._metrics.event("store_backpressure_waits")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BACKPRESSURE_MAX_WAIT):
                while self.pressing:
                    await self._room.wait()

    def _changed(self) -> None:
        if self.pressing:
            self._room.clear()
        else:
            self._room.set()

    def add(self, collection: str, entries: Sequence[Pending]) -> None:
        """Buffer documents for `collection`, encoded to BSON now.

        Encoded, a document held in the buffer takes a fraction of its dicts' memory (a quote's
        490 bytes of BSON against several KB of Python objects), and `insert_many` sends the
        bytes as they are. One that BSON can't hold (an integer past int64, a NUL in a key) is
        dead-lettered here, and never holds up a batch.
        """
        queue = self._pending[collection]
        added = len(queue)
        for entry in entries:
            try:
                encoded = replace(entry, doc=RawBSONDocument(bson.encode(entry.doc)))
            except UNENCODABLE as exc:
                message = f"not storable in BSON: {exc}"[:500]
                self._dead.reject(entry.channel, entry.raw, "mongo_write_error", message, receipt=entry.receipt)
                continue
            queue.append(encoded)
            self._bytes[collection] += _bytes(encoded)
        added = len(queue) - added
        if not added:
            return
        self._size += added
        if self._over():
            self._shed()
        self._changed()
        self._idle.clear()
        self._wake.set()
        if self._size >= self._max_docs:
            self._full.set()

    def _over(self) -> bool:
        return self._size > self._buffer_max or self.buffered_bytes > self._buffer_max_bytes

    def _shed(self) -> None:
        """Buffer full (MongoDB down for long): dead-letter the oldest, so nothing is silent.

        Each goes from the collection that holds the most of what is over its bound: the
        most documents, or the most bytes. Chains are large and ticks many, so a bound in
        bytes alone would shed chains only, and one in documents ticks and quotes only.
        """
        shed = 0
        while self._over():
            by_bytes = self._size <= self._buffer_max
            collection = max(
                (name for name, queue in self._pending.items() if queue),
                key=lambda name: self._bytes[name] if by_bytes else len(self._pending[name]),
            )
            entry = self._pending[collection].popleft()
            self._size -= 1
            self._bytes[collection] -= _bytes(entry)
            shed += 1
            self._metrics.event("store_buffer_overflow")
            self._dead.reject(
                entry.channel, entry.raw, "store_buffer_full", "MongoDB write buffer full", receipt=entry.receipt
            )
        log.error(
            "store_buffer_full",
            shed=shed,
            buffer_max=self._buffer_max,
            buffer_max_bytes=self._buffer_max_bytes,
            note="oldest dead-lettered",
        )

    async def ensure_indexes(self) -> None:
        for name, models in INDEXES.items():
            await self._db[name].create_indexes(models)
        self.indexes_ready.set()

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            await self._wake.wait()
            if self._size < self._max_docs:
                # Linger: a trickle of messages still goes out as one insert.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval)
            self._wake.clear()
            self._full.clear()
            while self._size:
                if self._yield_to is not None and not self.pressing:  # pressing: the others wait for us
                    await self._yield_to()
                if await self._flush_round():
                    backoff.reset()
                else:
                    await asyncio.sleep(backoff.next_delay())
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def flush(self, deadline: float) -> int:
        """Write everything before `deadline` (monotonic); return how many entries are left.

        Batches the background flusher has in flight count too: they are waited for, never
        assumed written, so cancelling the flusher afterwards can't lose one.
        """
        backoff = Backoff()
        while (self._size or self._in_flight) and (left := deadline - time.monotonic()) > 0:
            if self._in_flight:
                try:
                    await asyncio.wait_for(self._settled.wait(), left)
                except TimeoutError:
                    break
                continue
            try:
                written = await asyncio.wait_for(self._flush_round(), left)
            except TimeoutError:
                break  # whatever was in flight is handed over by take_all()
            if not written:
                await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))
        return self.held

    def take_all(self) -> list[Pending]:
        """Hand over what was not written by the hard deadline, in flight included, for dead-lettering.

        An in-flight batch may in fact land; replaying its dead letters is then a duplicate,
        which the `_id` index absorbs.
        """
        left = [entry for batch in self._in_flight.values() for entry in batch]
        left += [entry for queue in self._pending.values() for entry in queue]
        for queue in self._pending.values():
            queue.clear()
        self._bytes = dict.fromkeys(INDEXES, 0)
        self._in_flight.clear()
        self._size = 0
        self._changed()
        return left

    async def _flush_round(self) -> bool:
        results = await asyncio.gather(*(self._insert(name, queue) for name, queue in self._pending.items() if queue))
        return all(results)

    async def _insert(self, collection: str, queue: deque[Pending]) -> bool:
        async with self._writing[collection], self._inserting:
            return await self._insert_next(collection, queue)

    async def _insert_next(self, collection: str, queue: deque[Pending]) -> bool:
        batch: list[Pending] = []
        size = payloads = 0  # BSON, for the insert's bound; raw payloads, for the buffer's
        while queue and len(batch) < self._max_docs and size < INSERT_MAX_BYTES:
            batch.append(queue.popleft())
            size += _size(batch[-1])
            payloads += len(batch[-1].raw)
        if not batch:  # the other flusher (run() or a shutdown flush()) took them first
            return True
        self._size -= len(batch)
        self._bytes[collection] -= size + payloads
        self._changed()
        token = id(batch)
        self._in_flight[token] = batch
        self._settled.clear()
        try:
            return await self._insert_batch(collection, queue, batch)
        except asyncio.CancelledError:
            # Stopped mid-insert (shutdown): back into the buffer, so take_all() hands it over.
            # If the insert did land, the dead letter replays as a harmless duplicate.
            self._put_back(collection, queue, batch)
            raise
        finally:
            self._in_flight.pop(token, None)
            if not self._in_flight:
                self._settled.set()

    async def _insert_batch(self, collection: str, queue: deque[Pending], batch: list[Pending]) -> bool:
        started = time.perf_counter()
        failed: dict[int, str] = {}
        try:
            docs = cast(list[RawBSONDocument], [entry.doc for entry in batch])  # as `add` buffered them
            await self._db[collection].insert_many(docs, ordered=False)
        except UNENCODABLE as exc:
            # Encoded already, so only a document over the server's size limit gets here
            # (DocumentTooLarge, before anything is sent): dead-letter it, write the others.
            failed = {i: f"not storable: {exc}"[:500] for i, entry in enumerate(batch) if _size(entry) > MAX_BSON_SIZE}
            if not failed:
                failed = dict.fromkeys(range(len(batch)), f"not storable: {exc}"[:500])
            keep = [entry for index, entry in enumerate(batch) if index not in failed]
            self._reject(batch, failed)  # now: a retry that fails requeues only what is left
            batch[:] = keep  # in place: it is also what is in flight, should shutdown cancel the retry
            return not batch or await self._insert_batch(collection, queue, batch)
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                if error.get("code") != DUPLICATE_KEY:
                    failed[int(error["index"])] = str(error.get("errmsg", "write error"))
            if exc.details.get("writeConcernErrors"):
                return self._requeue(collection, queue, batch, exc)
        except PyMongoError as exc:
            if is_transient(exc):
                return self._requeue(collection, queue, batch, exc)
            failed = {i: redact_text(str(exc)) for i in range(len(batch))}
        self._metrics.event("mongo_batches")
        if self._failing:
            self._failing = False
            self._changed()
        self._metrics.event(f"mongo_docs:{collection}", len(batch) - len(failed))
        elapsed = time.perf_counter() - started
        self._metrics.histograms.observe(MONGO_WRITE, collection, elapsed)
        self._metrics.histograms.observe(MONGO_BATCH_SIZE, collection, len(batch))
        self._reject(batch, failed)
        stored = [entry for i, entry in enumerate(batch) if i not in failed]
        try:
            await self._on_durable([entry.mark for entry in stored if entry.mark])
        except Exception as exc:  # the data is stored; a lost mark only costs a re-check
            log.warning("mark_done_failed", error=redact_text(str(exc)), count=len(stored))
        for entry in stored:
            if entry.receipt is not None:
                entry.receipt.settle()
        return True

    def _reject(self, batch: list[Pending], failed: dict[int, str]) -> None:
        for index, message in failed.items():
            entry = batch[index]
            self._dead.reject(entry.channel, entry.raw, "mongo_write_error", message, receipt=entry.receipt)

    def _put_back(self, collection: str, queue: deque[Pending], batch: list[Pending]) -> None:
        queue.extendleft(reversed(batch))
        self._size += len(batch)
        self._bytes[collection] += sum(map(_bytes, batch))
        self._changed()

    def _requeue(self, collection: str, queue: deque[Pending], batch: list[Pending], exc: Exception) -> bool:
        self._failing = True
        self._put_back(collection, queue, batch)
        self._metrics.event("mongo_retries")
        log.warning("mongo_write_retry", collection=collection, buffered=self._size, error=redact_text(str(exc))[:300])
        return False


# What bson.encode raises for a document BSON can't hold (and insert_many, as DocumentTooLarge,
# an InvalidDocument, for one over the server's size limit).
UNENCODABLE: Final = (InvalidDocument, OverflowError)
MAX_BSON_SIZE: Final = 16 * 1024 * 1024  # MongoDB's maxBsonObjectSize
BACKPRESSURE_MAX_WAIT: Final = 1.0  # seconds a batch waits for the writer (`MongoStore.room`), then goes
# An insert_many also stops at this much BSON (the document that reaches it included): PyMongo
# builds each message whole in memory, up to 48 MB, beside the buffered documents it copies.
INSERT_MAX_BYTES: Final = 4 * 1024 * 1024


def _size(entry: Pending) -> int:
    return len(entry.doc.raw) if isinstance(entry.doc, RawBSONDocument) else 0


def _bytes(entry: Pending) -> int:
    """What a buffered entry holds against the byte bound: its BSON and its raw payload."""
    return _size(entry) + len(entry.raw)
