"""metaops.client against the real service over HTTP: the surface, the ambient metadata, refusals, exit.

Delivery under faults (retries, exactly once, kills) is in ``test_client_delivery.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import types
from typing import Any

import pytest

from metaops import InvalidOperationError, InvalidValueError, MetadataTooLargeError, MetaopsError
from metaops.client import (
    AsyncMetadataClient,
    ClientClosedError,
    MetadataClient,
    MissingCredentialsError,
    RejectedFlush,
    RequestRefusedError,
    RetryPolicy,
    ServiceUnavailableError,
    WrongEventLoopError,
    metadata,
)
from metaops.client._base import BaseClient
from tests import _client_service as client_service
from tests._client_service import FAST, TOKEN, ThreadedService, new_run_name
from tests._faults import Exchange, fault_proxy
from tests._serve import ROOT
from tests.test_public_api import _isort_style_key

service = client_service.service
run_id = client_service.run_id


def make(url: str, run_id: str, **options: Any) -> MetadataClient:
    settings: dict[str, Any] = {"access_token": TOKEN, "flush_interval": 0.02, "retry": FAST, "timeout": 5.0}
    settings.update(options)
    return MetadataClient(run_id, base_url=url, **settings)


def make_async(url: str, run_id: str, **options: Any) -> AsyncMetadataClient:
    settings: dict[str, Any] = {"access_token": TOKEN, "flush_interval": 0.02, "retry": FAST, "timeout": 5.0}
    settings.update(options)
    return AsyncMetadataClient(run_id, base_url=url, **settings)


# --------------------------------------------------------------------------- the public API

CLIENT_API = [
    "EXIT_TIMEOUT",
    "AmbientMetadata",
    "AsyncMetadataClient",
    "ClientClosedError",
    "MetadataClient",
    "MissingCredentialsError",
    "RejectedFlush",
    "RequestRefusedError",
    "RetryPolicy",
    "RunSnapshot",
    "ServiceUnavailableError",
    "StreamChunk",
    "Subscription",
    "WrongEventLoopError",
    "metadata",
    "read_stream",
    "read_stream_async",
    "subscribe",
    "subscribe_async",
]


def test_the_client_api_is_pinned_sorted_and_exactly_the_public_names() -> None:
    import metaops.client

    assert metaops.client.__all__ == CLIENT_API
    assert sorted(CLIENT_API, key=_isort_style_key) == CLIENT_API
    public = {
        name
        for name, value in vars(metaops.client).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations"} == set(CLIENT_API)
    # What the client sets aside is the buffer's own record, not a copy of its own making.
    assert metaops.client.RejectedFlush is metaops.RejectedFlush


@pytest.mark.parametrize(
    "error",
    [
        MissingCredentialsError("no URL", ("base_url (TRIGGER_API_URL)",)),
        ClientClosedError("closed"),
        RequestRefusedError("refused", 413),
        ServiceUnavailableError("down", 5, "503: busy"),
        WrongEventLoopError("another loop"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_client_errors_pickle_and_show_their_public_home(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.__dict__) == (type(error), str(error), error.__dict__)
    assert type(error).__module__ == "metaops.client"
    assert isinstance(error, MetaopsError)


def test_without_httpx_the_client_says_which_extra_to_install() -> None:
    done = _script(
        """
        import sys
        sys.modules["httpx"] = None  # as if not installed
        import metaops
        try:
            import metaops.client
        except ImportError as error:
            print(error)
        """
    )
    assert "pip install 'metaops[client]'" in done.stdout, done.stderr


# --------------------------------------------------------------------------- the surface


def test_every_update_method_reaches_the_service_and_flush_persists_them(
    service: ThreadedService, run_id: str
) -> None:
    with make(service.url, run_id, flush_interval=60) as md:
        md.set("status", "processing").set("progress", {"done": 0}).set("$.progress.done", 3)
        md.append("logs", "a").append("logs", "b").append("tags", "x").append("tags", "y")
        md.increment("rows", 5).decrement("rows", 2).remove("tags", "x").delete("status")
        md.flush()
        assert (
            service.metadata(run_id)
            == md.current()
            == {
                "progress": {"done": 3},
                "logs": ["a", "b"],
                "tags": ["y"],
                "rows": 3,
            }
        )
        md.replace({"fresh": True})
        md.flush()
        assert service.metadata(run_id) == {"fresh": True}
        assert md.get("fresh") is True


def test_the_flusher_thread_sends_without_being_asked(service: ThreadedService, run_id: str) -> None:
    md = make(service.url, run_id)
    md.increment("n", 7)
    for _ in range(500):
        if service.metadata(run_id) == {"n": 7}:
            break
        threading.Event().wait(0.01)
    assert service.metadata(run_id) == {"n": 7}
    md.close()


def test_flush_returns_at_once_when_nothing_is_queued(service: ThreadedService, run_id: str) -> None:
    with fault_proxy(service.url) as proxy, make(proxy.url, run_id) as md:
        md.flush()
        md.flush()
        assert proxy.exchanges == []


def test_parent_and_root_updates_reach_their_runs(service: ThreadedService) -> None:
    root, parent, child = (new_run_name() for _ in range(3))
    service.create_run(root)
    service.create_run(parent, parentId=root)
    service.create_run(child, parentId=parent)
    with make(service.url, child, is_root=False) as md:
        md.parent.increment("rows").increment("rows").append("children", child)
        md.root.set("status", "running")
        md.increment("own")
        md.flush()
    service.settle()
    assert service.metadata(child) == {"own": 1}
    assert service.metadata(parent) == {"rows": 2, "children": [child]}
    assert service.metadata(root) == {"status": "running"}


def test_on_a_root_run_parent_and_root_act_on_the_run_itself(service: ThreadedService, run_id: str) -> None:
    with make(service.url, run_id) as md:
        md.parent.increment("n")
        md.root.increment("n")
        assert md.get("n") == 2
    assert service.metadata(run_id) == {"n": 2}


def test_retrieve_reads_the_service_and_leaves_the_local_copy(service: ThreadedService, run_id: str) -> None:
    with make(service.url, run_id, flush_interval=60) as md:
        md.increment("n").flush()
        md.increment("n")
        assert md.retrieve() == {"n": 1}
        assert md.current() == {"n": 2}


def test_retrieve_of_an_unknown_run_raises_the_services_refusal(service: ThreadedService) -> None:
    with make(service.url, "run_that_does_not_exist") as md, pytest.raises(RequestRefusedError) as refused:
        md.retrieve()
    assert refused.value.status == 404


def test_metadata_given_at_start_is_what_current_shows_until_the_first_answer(
    service: ThreadedService,
) -> None:
    run = new_run_name()
    service.create_run(run, metadata={"n": 10, "other": "x"})
    with make(service.url, run, metadata={"n": 10}, flush_interval=60) as md:
        assert md.increment("n").current() == {"n": 11}
        md.flush()
        assert md.current() == {"n": 11, "other": "x"}


# --------------------------------------------------------------------------- settings


def test_base_url_and_token_default_to_the_official_sdks_variables(
    service: ThreadedService, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIGGER_API_URL", service.url)
    monkeypatch.setenv("TRIGGER_SECRET_KEY", TOKEN)
    with MetadataClient(run_id) as md:
        assert md.base_url == service.url
        md.increment("n").flush()
    assert service.metadata(run_id) == {"n": 1}


@pytest.mark.parametrize(
    ("url", "token", "missing"),
    [
        (None, None, ("base_url (TRIGGER_API_URL)", "access_token (TRIGGER_SECRET_KEY)")),
        ("http://127.0.0.1:9", None, ("access_token (TRIGGER_SECRET_KEY)",)),
        (None, "secret", ("base_url (TRIGGER_API_URL)",)),
    ],
)
def test_missing_credentials_say_what_is_missing(
    url: str | None, token: str | None, missing: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRIGGER_API_URL", raising=False)
    monkeypatch.delenv("TRIGGER_SECRET_KEY", raising=False)
    for cls in (MetadataClient, AsyncMetadataClient):
        with pytest.raises(MissingCredentialsError) as raised:
            cls("run_1", base_url=url, access_token=token)
        assert raised.value.missing == missing
        assert isinstance(raised.value, ValueError)
        for name in ("TRIGGER_API_URL", "TRIGGER_SECRET_KEY"):
            assert (name in str(raised.value)) == any(name in item for item in missing)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"flush_interval": 0}, ValueError),
        ({"flush_interval": float("inf")}, ValueError),
        ({"timeout": "10"}, TypeError),
        ({"retry": 3}, TypeError),
        ({"on_reject": "log"}, TypeError),
        ({"base_url": "ftp://example.com"}, ValueError),
        ({"base_url": "not a url"}, ValueError),
        ({"access_token": "two words"}, ValueError),
    ],
)
def test_bad_settings_are_refused_with_typed_errors(options: dict[str, Any], error: type[Exception]) -> None:
    settings = {"base_url": "http://127.0.0.1:9", "access_token": "t", **options}
    with pytest.raises(error):
        MetadataClient("run_1", **settings)


@pytest.mark.parametrize("run_id", ["", 7, "line\nbreak"])
def test_a_bad_run_id_is_refused(run_id: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        MetadataClient(run_id, base_url="http://127.0.0.1:9", access_token="t")


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(TypeError, match="initial_delay"):
        RetryPolicy(initial_delay="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_delay"):
        RetryPolicy(max_delay=-1)


# --------------------------------------------------------------------------- bad input, closed clients


def test_bad_input_is_refused_at_the_call_with_the_buffers_errors_and_never_reaches_the_wire(
    service: ThreadedService, run_id: str
) -> None:
    with fault_proxy(service.url) as proxy, make(proxy.url, run_id, flush_interval=60) as md:
        md.set("ok", 1)
        with pytest.raises(InvalidValueError):
            md.set("tags", {"a", "b"})
        with pytest.raises(InvalidValueError):
            md.increment("n", True)
        with pytest.raises(InvalidOperationError):
            md.set("__proto__", 1)
        with pytest.raises(MetadataTooLargeError):
            md.set("blob", "x" * 300_000)
        with pytest.raises(InvalidValueError):
            md.parent.append("logs", object())
        assert md.current() == {"ok": 1}
        md.flush()
        (exchange,) = proxy.exchanges
        sent = (
            b'{"operations":[{"type":"set","key":"ok","value":1}],"parentOperations":[],"rootOperations":[]}'
        )
        assert exchange.body == sent
    assert service.metadata(run_id) == {"ok": 1}


def test_updates_after_close_are_refused_not_lost_silently(service: ThreadedService, run_id: str) -> None:
    md = make(service.url, run_id)
    md.increment("n")
    md.close()
    assert service.metadata(run_id) == {"n": 1}
    for call in (lambda: md.increment("n"), lambda: md.parent.set("a", 1), lambda: md.replace({})):
        with pytest.raises(ClientClosedError):
            call()
    md.close()  # closing again does nothing
    assert md.closed


# --------------------------------------------------------------------------- the ambient metadata


def test_outside_any_run_the_ambient_calls_do_nothing_and_raise_nothing() -> None:
    assert metadata.client is None
    assert metadata.set("a", 1).increment("n").append("l", object()).delete("a") is metadata
    assert metadata.parent.increment("n").set("a", 1) is metadata.parent
    assert metadata.root.append("l", 1).replace({}) is metadata.root
    assert metadata.replace({"x": 1}).remove("l", 1).decrement("n") is metadata
    assert metadata.current() is None
    assert metadata.get("a") is None
    assert metadata.run_id is None
    metadata.flush()
    asyncio.run(metadata.aflush())


def test_with_binds_the_client_for_the_block_only(service: ThreadedService, run_id: str) -> None:
    def import_row() -> None:
        metadata.increment("rows")
        metadata.append("log", "row")

    with make(service.url, run_id) as md:
        assert metadata.client is md
        assert metadata.run_id == run_id
        for _ in range(3):
            import_row()
        assert metadata.get("rows") == 3
        assert metadata.current() == md.current()
        metadata.flush()
        assert service.metadata(run_id) == {"rows": 3, "log": ["row"] * 3}
    import_row()  # outside: nothing
    assert metadata.client is None
    assert service.metadata(run_id) == {"rows": 3, "log": ["row"] * 3}


def test_nested_clients_bind_the_inner_one_and_restore_the_outer(service: ThreadedService) -> None:
    outer_run, inner_run = new_run_name(), new_run_name()
    service.create_run(outer_run)
    service.create_run(inner_run)
    with make(service.url, outer_run) as outer:
        metadata.increment("outer")
        with make(service.url, inner_run) as inner:
            assert metadata.client is inner
            metadata.increment("inner")
        assert metadata.client is outer
        metadata.increment("outer")
    assert service.metadata(outer_run) == {"outer": 2}
    assert service.metadata(inner_run) == {"inner": 1}


def test_two_clients_in_two_threads_never_see_each_others_metadata(service: ThreadedService) -> None:
    runs = [new_run_name() for _ in range(2)]
    for run in runs:
        service.create_run(run)
    barrier = threading.Barrier(2)
    seen: dict[str, Any] = {}

    def task(run: str) -> None:
        with make(service.url, run):
            for _ in range(200):
                metadata.increment(run)
                metadata.append("who", run[-1])
            barrier.wait()  # both clients bound at once
            seen[run] = metadata.current()

    threads = [threading.Thread(target=task, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for run in runs:
        expected = {run: 200, "who": [run[-1]] * 200}
        assert seen[run] == expected
        assert service.metadata(run) == expected


def test_a_thread_sees_the_bound_client_only_when_run_in_a_copy_of_the_context(
    service: ThreadedService, run_id: str
) -> None:
    seen: dict[str, BaseClient | None] = {}

    def work(name: str) -> None:
        seen[name] = metadata.client
        metadata.increment("n")

    with make(service.url, run_id) as md:
        plain = threading.Thread(target=work, args=("plain",))
        copied = threading.Thread(target=contextvars.copy_context().run, args=(work, "copied"))
        for thread in (plain, copied):
            thread.start()
            thread.join(timeout=30)
    assert seen == {"plain": None, "copied": md}
    assert service.metadata(run_id) == {"n": 1}


def test_two_async_clients_in_two_tasks_never_see_each_other_and_child_tasks_inherit(
    service: ThreadedService,
) -> None:
    runs = [new_run_name() for _ in range(2)]
    for run in runs:
        service.create_run(run)

    async def row(run: str) -> None:
        metadata.increment(run)
        await asyncio.sleep(0)
        metadata.parent.increment("rows")  # a root run: its own metadata

    async def task(run: str) -> Any:
        async with make_async(service.url, run) as md:
            await asyncio.gather(*(asyncio.create_task(row(run)) for _ in range(50)))
            await metadata.aflush()
            return md.current()

    async def main() -> list[Any]:
        return await asyncio.gather(*(task(run) for run in runs))

    currents = asyncio.run(main())
    for run, current in zip(runs, currents, strict=True):
        assert current == {run: 50, "rows": 50}
        assert service.metadata(run) == {run: 50, "rows": 50}


def test_ambient_flush_of_an_async_client_says_to_await_aflush(service: ThreadedService, run_id: str) -> None:
    async def main() -> None:
        async with make_async(service.url, run_id):
            metadata.increment("n")
            with pytest.raises(TypeError, match="aflush") as raised:
                metadata.flush()
            assert isinstance(raised.value, MetaopsError)
            await metadata.aflush()

    asyncio.run(main())
    assert service.metadata(run_id) == {"n": 1}


def test_aflush_of_a_sync_client_runs_in_a_worker_thread(service: ThreadedService, run_id: str) -> None:
    async def main() -> None:
        with make(service.url, run_id, flush_interval=60):
            metadata.increment("n")
            await metadata.aflush()
            assert service.metadata(run_id) == {"n": 1}

    asyncio.run(main())


# --------------------------------------------------------------------------- the async client


def test_the_async_client_flushes_retrieves_and_closes(service: ThreadedService, run_id: str) -> None:
    async def main() -> None:
        md = make_async(service.url, run_id, flush_interval=60)
        md.set("status", "a").increment("n", 2)
        await md.flush()
        assert await md.retrieve() == {"status": "a", "n": 2}
        md.increment("n")
        await md.close()
        with pytest.raises(ClientClosedError):
            md.increment("n")

    asyncio.run(main())
    assert service.metadata(run_id) == {"status": "a", "n": 3}


def test_the_async_clients_task_flushes_in_the_background(service: ThreadedService, run_id: str) -> None:
    async def main() -> None:
        async with make_async(service.url, run_id):
            metadata.increment("n")
            for _ in range(500):
                if service.metadata(run_id) == {"n": 1}:
                    return
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert service.metadata(run_id) == {"n": 1}


# --------------------------------------------------------------------------- refusals


def test_a_413_and_a_400_are_set_aside_reported_and_later_updates_arrive(
    service: ThreadedService, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's own refusals: metadata over its limit (413) and a body it cannot parse (400)."""
    corrupt = {"next": False}

    def decide(exchange: Exchange) -> str | None:
        return "corrupt" if corrupt["next"] and exchange.method == "PUT" else None

    reported: list[RejectedFlush] = []
    caplog.set_level(logging.ERROR, logger="metaops.client")
    with (
        fault_proxy(service.url, decide=decide) as proxy,
        # The client allows 1 MB; the service keeps its 256 KB limit.
        make(proxy.url, run_id, flush_interval=60, limit=1_000_000, on_reject=reported.append) as md,
    ):
        md.set("blob", "x" * 300_000)
        with pytest.raises(RequestRefusedError) as too_large:
            md.flush()
        assert too_large.value.status == 413
        md.increment("n")
        corrupt["next"] = True
        with pytest.raises(RequestRefusedError) as malformed:
            md.flush()
        assert malformed.value.status == 400
        corrupt["next"] = False
        md.increment("n", 2).flush()
        assert md.current() == {"n": 2}  # the service's answer healed the local copy
        assert [len(r.flush.operations) for r in md.rejected] == [1, 1]
        assert md.rejected == tuple(reported)
        assert md.rejected[0].reason.startswith("413")
        assert md.rejected[1].reason.startswith("400")
        assert [exchange.fault for exchange in proxy.exchanges] == [None, "corrupt", None]
    assert service.metadata(run_id) == {"n": 2}
    refusals = [record for record in caplog.records if "set aside" in record.getMessage()]
    assert [record.levelno for record in refusals] == [logging.ERROR, logging.ERROR]


def test_refusals_in_the_background_are_set_aside_without_stopping_the_flusher(
    service: ThreadedService,
) -> None:
    md = make(service.url, "run_unknown_to_the_service")
    md.increment("n")
    for _ in range(500):
        if md.rejected:
            break
        threading.Event().wait(0.01)
    assert "404" in md.rejected[0].reason
    md.increment("n")
    md.close()  # the second flush is refused too; close() does not raise for what it set aside
    assert len(md.rejected) == 2


def test_the_on_reject_callback_runs_outside_the_round_so_it_may_flush_and_its_errors_are_logged(
    service: ThreadedService, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that flushes (a round would deadlock on itself) and then raises: calls keep working."""
    calls: list[str] = []

    def on_reject(rejected: RejectedFlush) -> None:
        calls.append(rejected.reason[:3])
        md.flush()
        raise RuntimeError("a bug in the host's callback")

    caplog.set_level(logging.ERROR, logger="metaops.client")
    with make(service.url, "run_unknown_to_the_service", flush_interval=60, on_reject=on_reject) as md:
        md.increment("n")
        with pytest.raises(RequestRefusedError):
            md.flush()
        md.increment("n")
    assert calls == ["404", "404"]
    assert sum("on_reject callback raised" in record.getMessage() for record in caplog.records) == 2


# --------------------------------------------------------------------------- no waiting on the network


def test_update_calls_never_wait_on_the_network(service: ThreadedService, run_id: str) -> None:
    """While the flusher's request hangs, another thread's calls all return and current() sees them."""
    release = threading.Event()
    holding = threading.Event()

    def decide(exchange: Exchange) -> str | None:
        if exchange.method == "PUT" and not release.is_set():
            holding.set()
            release.wait(60)
        return None

    with fault_proxy(service.url, decide=decide) as proxy, make(proxy.url, run_id) as md:
        md.increment("n")
        assert holding.wait(30)
        done = threading.Event()

        def caller() -> None:
            for _ in range(1000):
                md.increment("n")
            md.parent.increment("n")
            done.set()

        thread = threading.Thread(target=caller)
        thread.start()
        thread.join(timeout=30)
        finished_while_held = done.is_set() and not release.is_set()
        release.set()
        assert finished_while_held
        assert md.get("n") == 1002
    assert service.metadata(run_id) == {"n": 1002}


def test_flush_raises_after_its_retries_and_loses_nothing(service: ThreadedService, run_id: str) -> None:
    down = {"on": True}
    with (
        fault_proxy(service.url, decide=lambda exchange: "503" if down["on"] else None) as proxy,
        make(proxy.url, run_id, flush_interval=60) as md,
    ):
        md.increment("n", 5)
        with pytest.raises(ServiceUnavailableError) as failed:
            md.flush()
        assert failed.value.attempts == FAST.attempts
        assert isinstance(failed.value, ConnectionError)
        assert md.pending
        down["on"] = False
        md.increment("n")
        md.flush()
        assert not md.pending
    assert service.metadata(run_id) == {"n": 6}


# --------------------------------------------------------------------------- interpreter exit


def _script(body: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_client_never_closed_is_flushed_at_exit(service: ThreadedService) -> None:
    sync_run, async_run = new_run_name(), new_run_name()
    service.create_run(sync_run)
    service.create_run(async_run)
    done = _script(
        f"""
        import asyncio
        from metaops.client import AsyncMetadataClient, MetadataClient
        md = MetadataClient({sync_run!r}, flush_interval=3600)
        md.increment("n", 3).append("log", "never closed")

        async def main():
            amd = AsyncMetadataClient({async_run!r}, flush_interval=3600)
            amd.increment("n", 4)

        asyncio.run(main())
        """,
        TRIGGER_API_URL=service.url,
        TRIGGER_SECRET_KEY=TOKEN,
    )
    assert done.returncode == 0, done.stderr
    assert service.metadata(sync_run) == {"n": 3, "log": ["never closed"]}
    assert service.metadata(async_run) == {"n": 4}


def test_exit_is_bounded_when_the_service_never_answers(service: ThreadedService, run_id: str) -> None:
    """Every request hangs: the exit gives up at EXIT_TIMEOUT and says what it could not send."""
    release = threading.Event()

    def hang(exchange: Exchange) -> str | None:
        release.wait(300)
        return "drop"

    with fault_proxy(service.url, decide=hang) as proxy:
        done = _script(
            f"""
            import logging
            import metaops.client._base
            from metaops.client import MetadataClient
            logging.basicConfig()
            metaops.client._base.EXIT_TIMEOUT = 0.5  # the bound under test, shortened
            MetadataClient({run_id!r}, flush_interval=3600, timeout=600).increment("n")
            """,
            TRIGGER_API_URL=proxy.url,
            TRIGGER_SECRET_KEY=TOKEN,
        )
        release.set()
    assert done.returncode == 0, done.stderr
    assert "at exit, this is lost" in done.stderr
    assert service.metadata(run_id) == {}
