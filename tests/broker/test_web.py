"""The broker's web page and REST view: escaping, replay, cross-site refusal, a real browser."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from google.pubsub_v1 import types as pubsub

from homing.broker import Broker
from homing.broker.server import Addresses, serving
from homing.broker.web import create_app, render_page
from tests.broker.conftest import SUBSCRIPTION, TOPIC, subscription
from tests.support.required import required_tool
from tests.support.waiting import eventually_async

HOSTILE = "<img src=x id=injected onerror=alert(1)><script>document.title='owned'</script>"


async def _always_500(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(500)


async def _dead_letter_one(broker: Broker) -> str:
    await broker.create_topic(pubsub.Topic(name=TOPIC))
    await broker.create_subscription(subscription(dead_letter=5))
    [message_id] = await broker.publish(TOPIC, [(HOSTILE.encode(), {"kind": HOSTILE}, "")])
    worker = broker.worker(SUBSCRIPTION)
    await eventually_async(lambda: worker.dead)
    return message_id


@pytest.fixture
async def failing(tmp_path: Path) -> AsyncIterator[Broker]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(_always_500))
    async with client, Broker(tmp_path / "b.sqlite3", client=client) as b:
        yield b


async def test_the_page_escapes_message_data_and_attributes(failing: Broker) -> None:
    await _dead_letter_one(failing)
    page = render_page(failing)
    assert "<script>" not in page
    assert "<img" not in page
    assert "&lt;img src=x id=injected" in page
    assert "Replay" in page


async def test_replay_from_the_page_and_cross_site_refusal(failing: Broker) -> None:
    message_id = await _dead_letter_one(failing)
    transport = httpx.ASGITransport(app=create_app(failing))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8086") as web:
        form = {"subscription": SUBSCRIPTION, "message": message_id}
        refused = await web.post("/replay", data=form, headers={"origin": "http://evil.example"})
        assert refused.status_code == 403
        assert failing.worker(SUBSCRIPTION).dead
        missing = await web.post("/replay", data={**form, "message": "999"})
        assert missing.status_code == 404
        replayed = await web.post("/replay", data=form, headers={"origin": "http://127.0.0.1:8086"})
        assert replayed.status_code == 303
        assert not failing.worker(SUBSCRIPTION).dead or failing.worker(SUBSCRIPTION).acked == 0


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8086", "127.0.0.1.nip.io", "[::2]:1", ""]
)
async def test_a_request_naming_another_host_is_refused(failing: Broker, host: str) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: every route, GET included.
    await _dead_letter_one(failing)
    transport = httpx.ASGITransport(app=create_app(failing))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8086") as web:
        for path in ("/", "/v1/broker", "/certs"):
            refused = await web.get(path, headers={"host": host})
            assert refused.status_code == 421
            assert HOSTILE not in refused.text
        form = {"subscription": SUBSCRIPTION, "message": "1"}
        assert (await web.post("/replay", data=form, headers={"host": host})).status_code == 421
    assert failing.worker(SUBSCRIPTION).dead


@pytest.mark.parametrize("host", ["127.0.0.1:8086", "localhost:1", "LOCALHOST", "[::1]:8086"])
async def test_loopback_names_are_served_and_never_framed(failing: Broker, host: str) -> None:
    transport = httpx.ASGITransport(app=create_app(failing))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8086") as web:
        page = await web.get("/", headers={"host": host})
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert page.headers["x-frame-options"] == "DENY"


async def test_the_address_it_listens_on_may_be_named(failing: Broker) -> None:
    transport = httpx.ASGITransport(app=create_app(failing, host="10.0.0.5"))
    async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.5:8086") as web:
        assert (await web.get("/v1/broker")).status_code == 200
        assert (await web.get("/v1/broker", headers={"host": "evil"})).status_code == 421


async def test_the_rest_view(failing: Broker) -> None:
    await failing.create_topic(pubsub.Topic(name=TOPIC))
    transport = httpx.ASGITransport(app=create_app(failing))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8086") as web:
        published = await web.post(
            "/v1/projects/local/topics/events:publish",
            json={"messages": [{"data": base64.b64encode(b"x").decode(), "attributes": {}}]},
        )
        assert published.status_code == 200
        assert published.json()["messageIds"]
        bad = await web.post("/v1/projects/local/topics/events:publish", json={"messages": [{}]})
        assert bad.status_code == 400
        assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"
        unknown = await web.get("/v1/projects/local/subscriptions/nope/messages")
        assert unknown.status_code == 404
        topics = (await web.get("/v1/projects/local/topics")).json()
        assert [t["name"] for t in topics["topics"]] == [TOPIC]
        certs = await web.get("/certs")
        assert next(iter(certs.json().values())).startswith("-----BEGIN CERTIFICATE-----")


def _browse(browser: str, url: str, profile: Path, *what: str) -> str:
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1400,800",
            *what,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=45,
        check=True,
    )
    return result.stdout


@pytest.mark.e2e
async def test_the_page_in_a_real_browser(failing: Broker, tmp_path: Path) -> None:
    # `make test` installs Debian's chromium: in CI the page is always seen by a real browser.
    browser = required_tool("chromium", "chromium-browser", install="apt-get install -y chromium")
    await _dead_letter_one(failing)
    addresses: Addresses
    async with serving(failing, port=0, http_port=0) as addresses:
        dom = await asyncio.to_thread(
            _browse, browser, addresses.http + "/", tmp_path / "profile", "--dump-dom"
        )
        shot = tmp_path / "page.png"
        await asyncio.to_thread(
            _browse, browser, addresses.http + "/", tmp_path / "profile2", f"--screenshot={shot}"
        )
    assert "homing local push broker" in dom
    assert 'id="injected"' not in dom  # the data was shown as text, not parsed as markup
    assert "owned" not in dom.split("<title>")[1].split("</title>")[0]
    assert "&lt;img src=x id=injected" in dom
    assert "dead-lettered" in dom
    assert "Replay" in dom
    assert shot.read_bytes().startswith(b"\x89PNG")
