import threading
import uuid

import pytest
from elasticsearch import Elasticsearch

from helpers import Clock
from loglatent.lease import Lease, ensure_state_index


@pytest.fixture
def state_index(es: Elasticsearch):
    name = f"test-state-{uuid.uuid4().hex[:10]}"
    ensure_state_index(es, name)
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def test_second_worker_waits_until_expiry(es: Elasticsearch, state_index: str) -> None:
    clock = Clock()
    first = Lease(es, state_index, "worker", "host-a:1", ttl_seconds=60, clock=clock)
    second = Lease(es, state_index, "worker", "host-b:2", ttl_seconds=60, clock=clock)

    assert first.acquire()
    assert not second.acquire()
    clock.now += 50
    assert first.renew()
    clock.now += 50  # 100 s after the start, but 50 s after the renewal
    assert not second.acquire()

    clock.now += 61  # the first worker stopped renewing
    assert second.acquire()
    assert not first.renew()
    assert not first.acquire()
    state = second.read()
    assert state is not None
    assert state.holder == "host-b:2"


def test_release_frees_lease_at_once(es: Elasticsearch, state_index: str) -> None:
    clock = Clock()
    first = Lease(es, state_index, "worker", "a", ttl_seconds=600, clock=clock)
    second = Lease(es, state_index, "worker", "b", ttl_seconds=600, clock=clock)
    assert first.acquire()
    second.release()  # not the holder: changes nothing
    assert not second.acquire()
    first.release()
    assert second.acquire()


def test_racing_workers_one_wins(es: Elasticsearch, state_index: str) -> None:
    clock = Clock()
    for round_number in range(3):
        leases = [Lease(es, state_index, f"race-{round_number}", f"worker-{i}", ttl_seconds=60, clock=clock)
                  for i in range(8)]
        if round_number:
            # Start from an expired lease held by someone else, so the race is a takeover.
            stale = Lease(es, state_index, f"race-{round_number}", "gone", ttl_seconds=1, clock=clock)
            assert stale.acquire()
            clock.now += 5
        results: list[bool] = [False] * len(leases)
        barrier = threading.Barrier(len(leases))

        def contend(position: int) -> None:
            barrier.wait()
            results[position] = leases[position].acquire()

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(leases))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(results) == 1, (round_number, results)
        winner = leases[results.index(True)]
        state = winner.read()
        assert state is not None
        assert state.holder == winner.holder


def test_acquire_renew_race_in_one_worker(es: Elasticsearch, state_index: str) -> None:
    # A worker's main thread takes the lease before each job while its scheduler thread renews it.
    lease = Lease(es, state_index, "worker", "host-a:1", ttl_seconds=60)
    assert lease.acquire()
    rounds = 40
    results: dict[str, list[bool]] = {"acquire": [], "renew": []}
    barrier = threading.Barrier(2)

    def repeat(operation: str) -> None:
        for _ in range(rounds):
            barrier.wait()
            results[operation].append(getattr(lease, operation)())

    threads = [threading.Thread(target=repeat, args=(operation,)) for operation in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["acquire"] == [True] * rounds
    assert results["renew"] == [True] * rounds


def test_ttl_must_be_positive(es: Elasticsearch) -> None:
    with pytest.raises(ValueError, match="ttl_seconds must be positive"):
        Lease(es, "unused", "worker", "a", ttl_seconds=0)
