"""Delivery through faults, against the real service over HTTP: nothing lost, nothing applied twice.

A fault-injecting proxy (``tests/_faults.py``) sits between the client and the
service. The scripted tests below each force one path of the client's delivery
(a lost answer, a fence that finds the body applied, a fence that spends the key,
a connection refused); the fault runs draw faults at random (30% of requests)
while threads or tasks increment through the ambient ``metadata``; the kill test
SIGKILLs the service mid-run and starts it again on the same database. Each run
prints its counts: requests, faults injected, increments sent, stored, lost,
duplicated.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from metaops.client import (
    AsyncMetadataClient,
    ClientClosedError,
    MetadataClient,
    RetryPolicy,
    ServiceUnavailableError,
    metadata,
)
from metaops.client._core import FENCE_BODY
from tests import _client_service as client_service
from tests._client_service import FAST, TOKEN, Service, ThreadedService, threaded_service
from tests._faults import FAULTS, Exchange, FaultProxy, fault_proxy

# Under 30% faults a body fails all its attempts once in ~50,000 rounds: background
# rounds may still fail (they are retried at the next interval), final flushes do not.
PATIENT = RetryPolicy(attempts=8, initial_delay=0.005, max_delay=0.05)
service = client_service.service
run_id = client_service.run_id


@pytest.fixture
def backend_service(database_url: str) -> Iterator[ThreadedService]:
    """The service on a fresh database of each storage backend (for what depends on the storage)."""
    with threaded_service(database_url) as running:
        yield running


def make(url: str, run_id: str, **options: Any) -> MetadataClient:
    settings: dict[str, Any] = {"access_token": TOKEN, "flush_interval": 60, "retry": FAST, "timeout": 5.0}
    settings.update(options)
    return MetadataClient(run_id, base_url=url, **settings)


def puts(proxy: FaultProxy) -> list[Exchange]:
    return [exchange for exchange in proxy.exchanges if exchange.method == "PUT"]


def increments(exchange: Exchange) -> list[Any]:
    return [op["value"] for op in json.loads(exchange.body)["operations"]]


def applied(exchanges: list[Exchange]) -> list[Exchange]:
    """The exchanges the service applied: answered 200 without Idempotent-Replayed."""
    return [e for e in exchanges if e.status == 200 and not e.replayed and e.body != FENCE_BODY]


def held_then_newer(service: ThreadedService, run_id: str, put_faults: list[str]) -> list[Exchange]:
    """The fence tests' run: ``n += 1`` flushed while the first PUTs meet ``put_faults`` in turn,
    until the flush gives up with it held; then ``n += 10`` flushed. The PUTs the proxy saw."""
    service.create_run(run_id)
    faults = iter(put_faults)

    def decide(exchange: Exchange) -> str | None:
        return next(faults, None) if exchange.method == "PUT" else None

    with fault_proxy(service.url, decide=decide) as proxy, make(proxy.url, run_id) as md:
        md.increment("n")
        with pytest.raises(ServiceUnavailableError):
            md.flush()
        assert md.held  # any attempt may have delivered it: it is not merged yet
        md.increment("n", 10)
        md.flush()
        assert md.current() == {"n": 11}
    return puts(proxy)


# --------------------------------------------------------------------------- one path each


def test_an_answer_lost_after_the_service_applied_it_never_causes_a_second_application(
    service: ThreadedService, run_id: str
) -> None:
    """Every answer to the first body is lost (each attempt applied or replayed); the resend is replayed."""
    first_key: list[str] = []

    def decide(exchange: Exchange) -> str | None:
        if exchange.method != "PUT":
            return None
        if not first_key:
            first_key.append(exchange.key or "")
        return "lose" if len(puts(proxy)) < FAST.attempts else None

    with fault_proxy(service.url, decide=decide) as proxy, make(proxy.url, run_id) as md:
        md.increment("n")
        with pytest.raises(ServiceUnavailableError, match="held"):
            md.flush()
        assert md.held
        md.flush()
    sent = puts(proxy)
    assert {e.key for e in sent} == set(first_key)
    assert {e.body for e in sent} == {sent[0].body}
    assert len(applied(sent)) == 1
    assert sent[-1].replayed
    assert service.metadata(run_id) == {"n": 1}


def test_a_held_flush_that_was_applied_is_fenced_before_newer_calls_and_counted_once(
    backend_service: ThreadedService,
) -> None:
    """On every storage backend: the fence is answered as a replay, the key having been applied."""
    service, run_id = backend_service, "run_fenced"
    sent = held_then_newer(service, run_id, ["lose"] * FAST.attempts)
    held_key = sent[0].key
    fence = sent[FAST.attempts]
    (newer,) = sent[FAST.attempts + 1 :]
    assert (fence.key, fence.body, fence.replayed) == (held_key, FENCE_BODY, True)
    assert newer.key != held_key
    assert increments(newer) == [10]
    assert service.metadata(run_id) == {"n": 11}


def test_restore_and_merge_uses_a_new_key_only_after_the_fence_spent_the_old_one(
    backend_service: ThreadedService,
) -> None:
    """The held body never reached the service; the fence spends its key (on every storage backend)."""
    service, run_id = backend_service, "run_merged"
    sent = held_then_newer(service, run_id, ["drop"] * FAST.attempts)
    held_key, held_body = sent[0].key, sent[0].body
    fence = sent[FAST.attempts]
    (merged,) = sent[FAST.attempts + 1 :]
    assert all((e.key, e.body) == (held_key, held_body) for e in sent[: FAST.attempts])
    assert (fence.key, fence.body, fence.replayed, fence.status) == (held_key, FENCE_BODY, False, 200)
    assert merged.key != held_key
    assert increments(merged) == [11]
    assert service.metadata(run_id) == {"n": 11}
    # The old request, arriving now, finds its key spent: it applies nothing.
    late = httpx.put(
        f"{service.url}/api/v1/runs/{run_id}/metadata",
        content=held_body,
        headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": held_key or ""},
    )
    assert (late.status_code, late.headers.get("idempotent-replayed")) == (200, "true")
    assert service.metadata(run_id) == {"n": 11}


def test_a_fence_whose_answer_was_lost_is_not_taken_for_the_held_body_when_retried(
    backend_service: ThreadedService,
) -> None:
    """The held body never arrived; the fence spends its key but its answer is lost, and the
    retried fence is replayed. That replay is the fence's own: the body is merged, not dropped."""
    service, run_id = backend_service, "run_fence_lost"
    sent = held_then_newer(service, run_id, ["drop"] * FAST.attempts + ["lose"])
    held_key = sent[0].key
    lost_fence, replayed_fence, merged = sent[FAST.attempts :]
    assert (lost_fence.key, lost_fence.body, lost_fence.fault, lost_fence.replayed) == (
        held_key,
        FENCE_BODY,
        "lose",
        False,
    )
    assert (replayed_fence.key, replayed_fence.body, replayed_fence.replayed) == (held_key, FENCE_BODY, True)
    assert merged.key != held_key
    assert increments(merged) == [11]
    assert service.metadata(run_id) == {"n": 11}


def test_a_flush_that_never_reached_the_service_merges_without_a_fence(
    service: ThreadedService, run_id: str
) -> None:
    with fault_proxy(service.url) as proxy, make(proxy.url, run_id) as md:
        proxy.pause()
        md.increment("n")
        with pytest.raises(ServiceUnavailableError) as failed:
            md.flush()
        assert "held" not in str(failed.value)
        assert not md.held
        proxy.resume()
        md.increment("n", 10)
        md.flush()
    (merged,) = puts(proxy)
    assert increments(merged) == [11]
    assert service.metadata(run_id) == {"n": 11}


def test_keys_are_distinct_across_flushes_and_stable_across_retries(
    service: ThreadedService, run_id: str
) -> None:
    faults = iter(["503", "502-after", None, "429", None, None])
    with (
        fault_proxy(service.url, decide=lambda e: next(faults) if e.method == "PUT" else None) as proxy,
        make(proxy.url, run_id) as md,
    ):
        for n in (1, 2, 3):
            md.increment("n", n).flush()
    keys = [e.key for e in puts(proxy)]
    assert keys[0] == keys[1] == keys[2] != keys[3] == keys[4] != keys[5]
    assert service.metadata(run_id) == {"n": 6}


# --------------------------------------------------------------------------- random faults


def _report(name: str, proxy: FaultProxy, sent: int, stored: int) -> None:
    counts = proxy.counts()
    faults = dict(sorted(proxy.faults.items()))
    print(
        f"\n[{name}] requests={counts['requests']} faults={counts['faulted']} {faults} "
        f"applied-but-answer-lost={counts['answered_2xx_lost']} increments sent={sent} stored={stored} "
        f"lost={max(0, sent - stored)} duplicated={max(0, stored - sent)}"
    )


def _thread_run(
    service: ThreadedService,
    run_id: str,
    *,
    threads: int,
    per_thread: int,
    weights: dict[str, float],
    seed: int,
) -> None:
    with fault_proxy(service.url, rate=0.3, weights=weights, seed=seed, stall=0.3) as proxy:
        with make(proxy.url, run_id, flush_interval=0.01, retry=PATIENT, timeout=0.25):

            def work() -> None:
                for _ in range(per_thread):
                    metadata.increment("n")
                    time.sleep(0.004)  # spread the calls over many flushes

            workers = [
                threading.Thread(target=contextvars.copy_context().run, args=(work,)) for _ in range(threads)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=300)
        stored = service.metadata(run_id).get("n", 0)
        _report(f"{threads} threads x {per_thread}", proxy, threads * per_thread, stored)
        assert proxy.counts()["faulted"] > 0
    assert stored == threads * per_thread


NO_STALL = {kind: 1.0 for kind in FAULTS if kind != "stall"}


def test_threads_incrementing_through_30_percent_faults_store_exactly_n_times_m(
    service: ThreadedService, run_id: str
) -> None:
    _thread_run(service, run_id, threads=4, per_thread=200, weights=NO_STALL, seed=11)


@pytest.mark.slow
def test_many_threads_through_every_fault_store_exactly_n_times_m(
    service: ThreadedService, run_id: str
) -> None:
    _thread_run(service, run_id, threads=8, per_thread=2500, weights=dict.fromkeys(FAULTS, 1.0), seed=12)


def _task_run(
    service: ThreadedService, run_id: str, *, tasks: int, per_task: int, weights: dict[str, float]
) -> None:
    async def main(proxy: FaultProxy) -> None:
        client = AsyncMetadataClient(
            run_id,
            base_url=proxy.url,
            access_token=TOKEN,
            flush_interval=0.01,
            retry=PATIENT,
            timeout=0.25,
        )

        async def work() -> None:
            for _ in range(per_task):
                metadata.increment("n")
                await asyncio.sleep(0.004)

        async with client:
            await asyncio.gather(*(work() for _ in range(tasks)))

    with fault_proxy(service.url, rate=0.3, weights=weights, seed=21, stall=0.3) as proxy:
        asyncio.run(main(proxy))
        stored = service.metadata(run_id).get("n", 0)
        _report(f"{tasks} tasks x {per_task}", proxy, tasks * per_task, stored)
        assert proxy.counts()["faulted"] > 0
    assert stored == tasks * per_task


def test_async_tasks_incrementing_through_30_percent_faults_store_exactly_n_times_m(
    service: ThreadedService, run_id: str
) -> None:
    _task_run(service, run_id, tasks=8, per_task=200, weights=NO_STALL)


@pytest.mark.slow
def test_many_async_tasks_through_every_fault_store_exactly_n_times_m(
    service: ThreadedService, run_id: str
) -> None:
    _task_run(service, run_id, tasks=32, per_task=500, weights=dict.fromkeys(FAULTS, 1.0))


# --------------------------------------------------------------------------- the service killed


def _kill_run(
    database_url: str, *, kills: int, threads: int, per_thread: int, fault_rate: float = 0.0
) -> None:
    service = Service(database_url)
    try:
        run_id = "run_killed"
        service.create_run(run_id)
        results: list[int] = []
        with fault_proxy(service.url, rate=fault_rate, seed=31, stall=0.3) as proxy:
            with make(proxy.url, run_id, flush_interval=0.01, retry=PATIENT, timeout=1.0):

                def work() -> None:
                    calls = 0
                    for i in range(per_thread):
                        metadata.increment("n")  # acknowledged when it returns
                        calls += 1
                        if i % 2:
                            time.sleep(0.005)
                    results.append(calls)

                workers = [
                    threading.Thread(target=contextvars.copy_context().run, args=(work,))
                    for _ in range(threads)
                ]
                for worker in workers:
                    worker.start()
                for _ in range(kills):
                    # Kill while requests are in flight (some applied, their answers never sent).
                    before = len(proxy.exchanges)
                    while len(proxy.exchanges) < before + 5 and any(w.is_alive() for w in workers):
                        time.sleep(0.005)
                    service.kill()
                    time.sleep(0.2)
                    service.start()
                    proxy.upstream = service.address
                for worker in workers:
                    worker.join(timeout=300)
            sent = sum(results)
            stored = service.metadata(run_id).get("n", 0)
            _report(f"kill -9 x{kills}, {threads} threads", proxy, sent, stored)
            dead = sum(1 for e in proxy.exchanges if e.upstream_error is not None)
            print(f"[kill] requests that met a dead service: {dead}")
        assert sent == threads * per_thread
        assert stored == sent
    finally:
        service.stop()


def test_a_service_killed_mid_run_and_restarted_stores_everything_acknowledged_once(
    database_url: str,
) -> None:
    """On every storage backend: what the client took is stored once after close()."""
    _kill_run(database_url, kills=1, threads=3, per_thread=200)


@pytest.mark.slow
def test_a_service_killed_again_and_again_stores_everything_acknowledged_once(database_url: str) -> None:
    _kill_run(database_url, kills=5, threads=6, per_thread=1500, fault_rate=0.2)


def test_close_raises_while_the_service_is_unreachable_and_delivers_when_called_again(
    service: ThreadedService, run_id: str
) -> None:
    with fault_proxy(service.url) as proxy:
        md = make(proxy.url, run_id)
        md.increment("n", 3)
        proxy.pause()
        with pytest.raises(ServiceUnavailableError):
            md.close()
        with pytest.raises(ClientClosedError):
            md.increment("n")
        proxy.resume()
        md.close()
    assert service.metadata(run_id) == {"n": 3}
