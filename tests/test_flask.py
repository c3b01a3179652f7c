"""homing.flask: the blueprint answers as the ASGI endpoint does; publish() from any thread,
on one loop per process, also after a fork; and a real gunicorn serving the example app."""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from homing import Homing, KeyRing, MemoryPublisher, Signer
from homing.flask import FlaskHoming, LoopThread
from homing.publishers.base import OutgoingMessage
from homing.testing import push_body
from tests.conftest import OrderPlaced, Recorder
from tests.support import ROOT
from tests.support.ports import free_port
from tests.support.processes import answers, halt, launch, wait_ready
from tests.support.waiting import eventually
from tests.test_endpoint import BAD_INPUT
from tests.test_ingress import SHAPES

ORDER = OrderPlaced(order_id=1, total_cents=999)


class ThreadNoting(MemoryPublisher):
    """Keeps messages, and the name of the thread each was published on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    async def _send(self, message: OutgoingMessage) -> str:
        self.threads.append(threading.current_thread().name)
        return await super()._send(message)


def _service(keys: KeyRing, recorder: Recorder, **options: int) -> Homing:
    homing = Homing(
        signer=Signer(keys, legacy_secret="the-article-shared-secret"),
        publisher=ThreadNoting(),
        accept_legacy_without_oidc=True,
        **options,  # type: ignore[arg-type]
    )
    homing.events.register("order.placed", OrderPlaced)
    homing.handler(OrderPlaced)(recorder)
    return homing


@pytest.fixture
def flask_homing(keys: KeyRing, recorder: Recorder) -> Iterator[FlaskHoming]:
    events = FlaskHoming(_service(keys, recorder))
    yield events
    events.close()


@pytest.fixture
def flask_client(flask_homing: FlaskHoming) -> FlaskClient:
    app = Flask(__name__)
    flask_homing.init_app(app)
    assert app.extensions["homing"] is flask_homing
    return app.test_client()


def _answer(status: int, content: bytes) -> tuple[int, object]:
    return status, (orjson.loads(content) if content else None)


@pytest.mark.parametrize("case", BAD_INPUT)
async def test_bad_input_gets_the_asgi_endpoints_answer(
    flask_client: FlaskClient,
    flask_homing: FlaskHoming,
    client: httpx.AsyncClient,
    homing: Homing,
    recorder: Recorder,
    case: str,
) -> None:
    make, status, outcome = BAD_INPUT[case]
    body = make(homing)  # the ASGI service and the Flask one share their keys
    asgi = await client.post("/events", content=body)
    flask = flask_client.post("/events", data=body, content_type="application/json")
    assert _answer(flask.status_code, flask.data) == _answer(asgi.status_code, asgi.content)
    assert (flask.status_code, flask.json["outcome"]) == (status, outcome)  # type: ignore[index]
    assert recorder.seen == []
    assert flask_homing.run(flask_homing.homing.quarantine.list()) == []


def test_a_signed_push_runs_the_handler_once(
    flask_client: FlaskClient, flask_homing: FlaskHoming, recorder: Recorder
) -> None:
    body = push_body(flask_homing.homing, ORDER, event_id="e-flask")
    for _ in range(2):  # delivered, then redelivered
        response = flask_client.post("/events", data=body, content_type="application/json")
        assert (response.status_code, response.data) == (204, b"")
    [(event, delivery)] = recorder.seen
    assert (event, delivery.event_id) == (ORDER, "e-flask")


@pytest.mark.parametrize("shape", ["unwrapped", "cloudevents-binary", "cloudevents-structured"])
def test_every_push_shape_runs_the_handler_once(
    flask_client: FlaskClient, flask_homing: FlaskHoming, recorder: Recorder, shape: str
) -> None:
    message = flask_homing.homing.sign(ORDER, event_id="e-shape", attributes={"Tenant": "a"})
    body, headers = SHAPES[shape](message.data, message.attributes, "m-shape")
    for _ in range(2):
        response = flask_client.post(
            "/events", data=body, headers={k: v.decode("latin-1") for k, v in headers.items()}
        )
        assert (response.status_code, response.data) == (204, b"")
    [(_, delivery)] = recorder.seen
    assert (delivery.event_id, delivery.attributes["Tenant"]) == ("e-shape", "a")


def test_other_methods_get_405_as_from_the_asgi_endpoint(flask_client: FlaskClient) -> None:
    response = flask_client.get("/events")
    assert response.status_code == 405
    assert response.json == {"outcome": "method_not_allowed"}
    assert response.headers["Allow"] == "POST"


def test_an_oversize_body_gets_413(keys: KeyRing, recorder: Recorder) -> None:
    events = FlaskHoming(_service(keys, recorder, max_body_size=1024))
    app = Flask(__name__)
    events.init_app(app)
    response = app.test_client().post("/events", data=b"{" + b" " * 2000 + b"}")
    assert response.status_code == 413
    assert response.json == {"outcome": "too_large", "detail": "the body is larger than 1024 bytes"}
    assert recorder.seen == []
    events.close()


def test_publish_from_many_threads_runs_on_one_loop_thread(flask_homing: FlaskHoming) -> None:
    def publish(n: int) -> str:
        return flask_homing.publish(OrderPlaced(order_id=n, total_cents=n))

    with ThreadPoolExecutor(max_workers=8) as pool:
        event_ids = list(pool.map(publish, range(40)))
    publisher = flask_homing.homing.publisher
    assert isinstance(publisher, ThreadNoting)
    assert len(set(event_ids)) == 40
    assert sorted(m.event_id for _, m in publisher.messages) == sorted(event_ids)
    assert set(publisher.threads) == {"homing-loop"}


def test_run_from_the_loop_itself_is_refused(flask_homing: FlaskHoming) -> None:
    async def nested() -> None:
        flask_homing.run(flask_homing.homing.quarantine.list())

    with pytest.raises(RuntimeError, match="from its own loop"):
        flask_homing.run(nested())


def test_a_forked_process_gets_a_loop_of_its_own(flask_homing: FlaskHoming) -> None:
    parent_loop = flask_homing.loop.loop
    flask_homing.publish(ORDER)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: the point
        pid = os.fork()
    if pid == 0:  # the child: publish on a loop of its own
        try:
            event_id = flask_homing.publish(ORDER)
            fresh = flask_homing.loop.loop is not parent_loop
            os.write(write, f"{fresh} {event_id}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    reply = os.read(read, 200).decode()
    os.close(read)
    assert status == 0
    own_loop, event_id = reply.split()
    assert own_loop == "True"
    assert re.fullmatch(r"[0-9a-f]{32}", event_id)
    assert flask_homing.loop.loop is parent_loop  # the parent's loop is untouched
    flask_homing.publish(ORDER)


def test_close_stops_the_loop_thread(keys: KeyRing, recorder: Recorder) -> None:
    loop = LoopThread(name="homing-loop-closing")
    events = FlaskHoming(_service(keys, recorder), loop=loop)
    events.publish(ORDER)
    assert any(t.name == "homing-loop-closing" for t in threading.enumerate())
    events.close()
    assert not any(t.name == "homing-loop-closing" for t in threading.enumerate())
    publisher = events.homing.publisher
    assert publisher is not None
    assert publisher._closed


# -- a real server ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_gunicorn_serves_the_example_with_threads_and_workers(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    keys = "flask-key:a-flask-example-secret-long-enough"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
    env.update(HOMING_SIGNING_KEYS=keys, HOMING_LOOPBACK_URL=f"{url}/events")
    log = tmp_path / "gunicorn.log"
    gunicorn = [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4"]
    server = launch(
        [*gunicorn, "--bind", f"127.0.0.1:{port}", "flask_quickstart:app"],
        log,
        env=env,
        cwd=ROOT / "examples",
    )
    try:
        wait_ready(server, log, lambda: answers(f"{url}/events"), timeout=20, what="gunicorn")
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(
                pool.map(
                    lambda n: httpx.post(
                        f"{url}/change-name", params={"user_id": n, "name": f"N{n}"}, timeout=10
                    ),
                    range(24),
                )
            )
        assert [r.status_code for r in responses] == [200] * 24
        wanted = {f"emailing user {n}: your name is now N{n}" for n in range(24)}
        # Two workers write to one log: one's line may land inside the other's (print writes
        # the text and its newline apart), so each is looked for as text, not as a whole line.
        eventually(lambda: all(line in log.read_text() for line in wanted), timeout=20)

        homing = Homing(signer=Signer(KeyRing.from_string(keys)))
        tampered = push_body(
            homing,
            {"user_id": 1, "new_name": "x"},
            event_type="x",
            unregistered=True,
            defect="tampered",
        )
        refused = httpx.post(f"{url}/events", content=tampered, timeout=10)
        assert refused.status_code == 401
        assert refused.json()["outcome"] == "unauthenticated"
        chunked = httpx.post(f"{url}/events", content=iter([b"{", b"  ", b"}"]), timeout=10)
        assert (chunked.status_code, chunked.json()["outcome"]) == (400, "malformed")
    finally:
        halt(server)
    assert "Traceback" not in log.read_text()
