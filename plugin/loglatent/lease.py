"""One active worker per configuration: a lease document in Elasticsearch.

The lease is one document, ``lease-NAME``, in the state index. A worker holds it while the
document names the worker and its ``expires_at`` lies in the future. Every change is atomic on
the server: the first lease is created with ``op_type=create``, and a renewal or takeover writes
only if the document is still at the sequence number the worker read (``if_seq_no`` and
``if_primary_term``). Two workers that race for an expired lease therefore cannot both win.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, BadRequestError, ConflictError, Elasticsearch, NotFoundError, TransportError

from loglatent.errors import StateError

log = logging.getLogger(__name__)

STATE_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "kind": {"type": "keyword"},
        "holder": {"type": "keyword"},
        "expires_at": {"type": "double"},
        "acquired_at": {"type": "double"},
        "renewed_at": {"type": "double"},
        "job": {"type": "keyword"},
        "started": {"type": "date"},
        "day": {"type": "keyword"},
        "status": {"type": "keyword"},
    },
}


def ensure_state_index(client: Elasticsearch, index: str) -> None:
    """Create the state index with its mapping, or add the fields a newer loglatent indexes."""
    if client.indices.exists(index=index):
        client.indices.put_mapping(index=index, properties=STATE_MAPPING["properties"])
        return
    try:
        client.indices.create(index=index, mappings=STATE_MAPPING, settings={"number_of_replicas": 0})
    except BadRequestError as exc:
        # Another worker created it in the meantime (resource_already_exists_exception).
        if not client.indices.exists(index=index):
            raise exc


class LeaseHeld(StateError):
    """Another worker holds the lease."""


@dataclass(frozen=True)
class LeaseState:
    """The lease document as last read: who holds it, until when (Unix seconds), and its version."""

    holder: str
    expires_at: float
    seq_no: int
    primary_term: int


class Lease:
    """The lease ``name`` in ``index``, taken by ``holder`` for ``ttl_seconds`` at a time.

    ``clock`` returns Unix seconds; tests pass a controlled one. Workers should renew well
    before ``ttl_seconds`` pass, for example every third of it.
    """

    def __init__(
        self,
        client: Elasticsearch,
        index: str,
        name: str,
        holder: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        self.client, self.index, self.holder, self.ttl, self.clock = client, index, holder, ttl_seconds, clock
        self.document_id = f"lease-{name}"
        # The scheduler's thread renews while the main thread acquires before each job. Unserialised,
        # both read one version and the second write fails as if another worker held the lease.
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours, and return whether we hold it."""
        with self._lock:
            return self._acquire()

    def _acquire(self) -> bool:
        now = self.clock()
        try:
            self.client.create(index=self.index, id=self.document_id, document=self._document(now, now))
            log.info("Took the lease %s as %s", self.document_id, self.holder)
            return True
        except ConflictError:
            pass
        state = self.read()
        if state is None:
            return self._acquire()
        if state.holder != self.holder and state.expires_at > now:
            return False
        taken = self._write_if_unchanged(state, now)
        if taken and state.holder != self.holder:
            log.warning("Took over the lease %s from %s, whose lease expired %.0f s ago", self.document_id,
                        state.holder, now - state.expires_at)
        return taken

    def renew(self) -> bool:
        """Extend our lease by ``ttl_seconds``; return False when another worker holds it now."""
        with self._lock:
            now = self.clock()
            state = self.read()
            if state is None or state.holder != self.holder:
                return False
            return self._write_if_unchanged(state, now)

    def release(self) -> None:
        """Give the lease up if we hold it, so that another worker can take it at once."""
        with self._lock:
            state = self.read()
            if state is None or state.holder != self.holder:
                return
            try:
                self.client.delete(index=self.index, id=self.document_id, if_seq_no=state.seq_no,
                                   if_primary_term=state.primary_term)
            except (ConflictError, NotFoundError):
                return

    def read(self) -> LeaseState | None:
        """Return the lease document as stored now, or None when there is none."""
        try:
            found = self.client.get(index=self.index, id=self.document_id)
        except NotFoundError:
            return None
        source = found["_source"]
        return LeaseState(str(source["holder"]), float(source["expires_at"]), int(found["_seq_no"]),
                          int(found["_primary_term"]))

    def _write_if_unchanged(self, state: LeaseState, now: float) -> bool:
        acquired = now if state.holder != self.holder else None
        try:
            self.client.index(index=self.index, id=self.document_id, document=self._document(now, acquired),
                              if_seq_no=state.seq_no, if_primary_term=state.primary_term)
            return True
        except (ConflictError, NotFoundError):
            return False

    def _document(self, now: float, acquired_at: float | None) -> dict[str, Any]:
        document: dict[str, Any] = {"kind": "lease", "holder": self.holder, "expires_at": now + self.ttl,
                                    "renewed_at": now}
        if acquired_at is not None:
            document["acquired_at"] = acquired_at
        return document


class HeldLease:
    """A context that holds ``lease`` and renews it from a background thread until the block ends.

    For one-off commands such as ``run --once``, which hold the worker's lease while they run.
    """

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lease-renewal", daemon=True)

    def __enter__(self) -> HeldLease:
        if not self.lease.acquire():
            state = self.lease.read()
            holder = f"worker {state.holder}, until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(state.expires_at))}" \
                if state else "another worker"
            raise LeaseHeld(f"the lease in {self.lease.index} is held by {holder}; stop that worker first, or let it "
                            "run the jobs")
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.lease.release()

    def _renew(self) -> None:
        while not self._stop.wait(max(1.0, self.lease.ttl / 3)):
            try:
                if not self.lease.renew():
                    log.warning("Lost the lease %s while running; another worker may run jobs now",
                                self.lease.document_id)
            except (ApiError, TransportError) as exc:
                log.warning("Cannot renew the lease %s: %s", self.lease.document_id, exc)
