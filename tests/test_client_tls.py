"""Clients share one TLS context: building httpx's default one loads the CA bundle (~0.1 s)."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from metaops.client import AsyncMetadataClient, MetadataClient, _base


def test_every_client_of_a_process_shares_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[ssl.SSLContext] = []
    original = httpx.create_ssl_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        context = original()
        built.append(context)
        return context

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    monkeypatch.setattr(_base, "_tls", None)
    url, token = "https://metadata.invalid", "secret"
    clients = [MetadataClient(f"run_{n}", base_url=url, access_token=token) for n in range(3)]
    for client in clients:
        client.close()

    async def one_async() -> None:
        await AsyncMetadataClient("run_async", base_url=url, access_token=token).close()

    asyncio.run(one_async())
    assert len(built) == 1
    # Still httpx's defaults: certificates and host names are checked.
    assert built[0].verify_mode == ssl.CERT_REQUIRED
    assert built[0].check_hostname
