"""The metrics on a loopback port of their own (``HOMING_METRICS_PORT``): real sockets, since
where the server listens is the point."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from homing import ConfigurationError, Homing, Settings
from homing.telemetry.metrics import PrometheusMetrics
from homing.telemetry.metrics_server import MetricsServer
from tests.support.ports import free_port

KEYS = "k1:a-test-secret-long-enough-to-sign"


@pytest.fixture
def metrics() -> PrometheusMetrics:
    metrics = PrometheusMetrics()
    metrics.record_push("order.placed", "done", 0.01, 2.0)
    metrics.record_publish("order.placed", failed=False)
    return metrics


@pytest.fixture
async def server(metrics: PrometheusMetrics) -> AsyncIterator[MetricsServer]:
    async with MetricsServer(metrics, port=0) as server:
        yield server


async def refused(url: str) -> None:
    """Nothing listens at ``url``."""
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError, match="All connection attempts failed"):
            await client.get(url)


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # (TEST-NET-1: nothing is sent)
        except OSError:
            return None
        address = ipaddress.ip_address(probe.getsockname()[0])
    return None if address.is_loopback or address.is_unspecified else str(address)


async def test_the_metrics_are_served_on_the_loopback_port(server: MetricsServer) -> None:
    assert server.port != 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    async with httpx.AsyncClient() as client:
        first = await client.get(server.url)
        again = await client.get(server.url + "?name[]=x")  # the same connection, kept alive
        head = await client.head(server.url)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/plain; version=")
    assert 'homing_pushes_total{event_type="order.placed",outcome="done"} 1.0' in first.text
    assert 'homing_events_published_total{event_type="order.placed"} 1.0' in first.text
    assert again.text == first.text
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(first.content)


async def test_nothing_else_is_served(server: MetricsServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as client:
        assert (await client.get(base + "/")).status_code == 404
        assert (await client.get(base + "/metrics/x")).status_code == 404
        posted = await client.post(server.url, content=b"x" * 100_000)
        assert posted.status_code == 405
        assert posted.headers["allow"] == "GET, HEAD"
        assert (await client.get(server.url)).status_code == 200  # the connection still works


async def test_a_malformed_request_gets_400_and_the_server_goes_on(server: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 400 ")
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url)).status_code == 200


async def test_only_the_loopback_interface_listens(server: MetricsServer) -> None:
    assert server._server is not None
    assert {s.getsockname()[0] for s in server._server.sockets} == {"127.0.0.1"}
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback to try from")
    with pytest.raises(ConnectionRefusedError, match="Connect call failed"):
        await asyncio.open_connection(outside, server.port)


async def test_closing_stops_listening_and_ends_idle_connections(
    metrics: PrometheusMetrics,
) -> None:
    server = MetricsServer(metrics, port=0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await server.aclose()
    tail = await asyncio.wait_for(reader.read(), 10)  # the body, then the end: closed
    assert b"homing_pushes_total" in tail
    writer.close()
    with pytest.raises(ConnectionRefusedError, match="Connect call failed"):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_a_port_in_use_is_a_clear_error(metrics: PrometheusMetrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigurationError, match=f"cannot serve the metrics on 127.0.0.1:{port}"
        ):
            await MetricsServer(metrics, port=port).start()


# -- HOMING_METRICS_PORT, through Homing.from_env ------------------------------------------------


def _settings(**values: str) -> Settings:
    return Settings.from_env({"HOMING_PUBLISHER": "memory", "HOMING_SIGNING_KEYS": KEYS, **values})


async def test_from_env_serves_the_metrics_while_the_service_runs() -> None:
    port = free_port()
    homing = Homing.from_env({}, settings=_settings(HOMING_METRICS_PORT=str(port)))
    assert homing.wired is not None
    assert homing.wired.metrics_server is not None
    url = f"http://127.0.0.1:{port}/metrics"
    await refused(url)  # not before the start
    async with homing, httpx.AsyncClient() as client:
        answer = await client.get(url)
        assert answer.status_code == 200
        assert "homing_pushes_total" in answer.text
    await refused(url)  # nor after the shutdown


async def test_a_taken_port_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        homing = Homing.from_env({}, settings=_settings(HOMING_METRICS_PORT=str(port)))
        with pytest.raises(ConfigurationError, match="HOMING_METRICS_PORT: cannot serve"):
            await homing.start()
        await homing.aclose()


def test_the_metrics_port_needs_the_metrics_and_a_port_of_its_own() -> None:
    assert Settings.from_env({}).metrics_port is None
    with pytest.raises(ConfigurationError, match="HOMING_METRICS_PORT serves the Prometheus"):
        Homing.from_env({}, settings=_settings(HOMING_METRICS_PORT="9464", HOMING_TELEMETRY="off"))
    with pytest.raises(ConfigurationError, match=r"HOMING_METRICS_PORT must differ from PORT"):
        Homing.from_env({"PORT": "9464"}, settings=_settings(HOMING_METRICS_PORT="9464"))
    for bad in ("0", "65536", "x", "-1"):
        with pytest.raises(ConfigurationError, match="HOMING_METRICS_PORT: must be a whole number"):
            _settings(HOMING_METRICS_PORT=bad)
