"""The broker's HTTP side: OIDC certificates, a read-mostly REST view, and the web page (topics,
subscriptions and messages; Cloud Tasks queues and the tasks they owe).

- ``GET /certs``: the token certificates in Google's v1 format (``HOMING_OIDC_CERTS_URL``).
- ``GET /v1/broker``: every subscription's delivery state as JSON.
- ``GET /v1/projects/P/topics``, ``.../subscriptions``: the resources, as the REST API shows them.
- ``GET /v1/projects/P/subscriptions/S/messages``: in flight, waiting and dead-lettered.
- ``POST /v1/projects/P/topics/T:publish``: publish (``{"messages": [{"data": base64, ...}]}``).
- ``POST /v1/projects/P/subscriptions/S/messages/ID:replay``: deliver a dead letter again.
- ``GET /``: the web page; its replay buttons post to ``/replay``.

Message data is untrusted: the page escapes everything it shows. The page has no login: it is
meant for loopback only. So every request must name a loopback host (``127.0.0.1``,
``localhost``, ``[::1]``) or the address the broker was told to listen on — a DNS-rebinding page
names its own — state-changing requests from another origin are refused, and no page may frame
this one (``frame-ancestors 'none'``), so no Replay button can be clicked through another site.
"""

from __future__ import annotations

import base64
import binascii
import html
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from homing.broker.broker import Broker
from homing.broker.delivery import SubscriptionWorker
from homing.broker.errors import BrokerError, InvalidArgument
from homing.broker.storage import Pending

_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409}
_PREVIEW = 160


def _error(exc: BrokerError) -> JSONResponse:
    code = _STATUS.get(exc.status, 500)
    return JSONResponse(
        {"error": {"code": code, "message": str(exc), "status": exc.status}}, status_code=code
    )


def _cross_site(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return True
    return request.headers.get("sec-fetch-site") == "cross-site"


def _json(message: Any) -> Any:
    return orjson.loads(type(message).to_json(message, indent=0))


def _pending(pending: Pending) -> dict[str, Any]:
    message = pending.message
    return {
        "messageId": message.message_id,
        "data": base64.b64encode(message.data).decode(),
        "attributes": message.attributes,
        "orderingKey": message.ordering_key,
        "attempts": pending.attempts,
        "due": pending.due,
        "lastError": pending.last_error,
    }


#: The host names a request may give: loopback, by name or address.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_NOT_FRAMED = [
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
]


def host_name(host: str) -> str:
    """The name in a ``Host`` header: without its port, an IPv6 address without brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class LocalOnly:
    """ASGI middleware: refuse requests naming another host (421), and forbid framing."""

    def __init__(self, app: Any, *, also: str | None = None) -> None:
        self.app = app
        self.hosts = LOOPBACK_HOSTS | ({host_name(also)} if also else set())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if host_name(host).lower() not in self.hosts:
            response = JSONResponse(
                {"error": {"message": "this broker answers only to loopback host names"}},
                status_code=421,
            )
            response.raw_headers += _NOT_FRAMED
            await response(scope, receive, send)
            return

        async def framed(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_NOT_FRAMED]
            await send(message)

        await self.app(scope, receive, framed)


def create_app(broker: Broker, *, host: str | None = None) -> Any:
    """The HTTP application for ``broker``; ``host``, the address it listens on, may be named
    in requests besides the loopback names."""

    async def certs(_request: Request) -> Response:
        return JSONResponse(broker.issuer.certs(), headers={"cache-control": "public, max-age=300"})

    async def state(_request: Request) -> Response:
        return JSONResponse(broker.describe())

    async def topics(request: Request) -> Response:
        try:
            found = broker.list_topics(f"projects/{request.path_params['project']}")
        except BrokerError as exc:
            return _error(exc)
        return JSONResponse({"topics": [_json(t) for t in found]})

    async def subscriptions(request: Request) -> Response:
        try:
            found = broker.list_subscriptions(f"projects/{request.path_params['project']}")
        except BrokerError as exc:
            return _error(exc)
        return JSONResponse({"subscriptions": [_json(s) for s in found]})

    async def messages(request: Request) -> Response:
        name = (
            f"projects/{request.path_params['project']}/subscriptions/{request.path_params['id']}"
        )
        try:
            worker = broker.worker(name)
        except BrokerError as exc:
            return _error(exc)
        return JSONResponse(
            {
                "inFlight": [_pending(p) for p in worker.in_flight.values()],
                "waiting": [_pending(p) for p in worker.waiting()],
                "deadLettered": [_pending(p) for p in worker.dead.values()],
            }
        )

    async def publish(request: Request) -> Response:
        if _cross_site(request):
            return JSONResponse({"error": {"message": "cross-site request"}}, status_code=403)
        topic = f"projects/{request.path_params['project']}/topics/{request.path_params['id']}"
        try:
            body = orjson.loads(await request.body())
            batch = []
            for item in body["messages"]:
                data = binascii.a2b_base64(item.get("data", ""), strict_mode=True)
                batch.append(
                    (data, dict(item.get("attributes") or {}), item.get("orderingKey", ""))
                )
            ids = await broker.publish(topic, batch)
        except BrokerError as exc:
            return _error(exc)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            return _error(InvalidArgument(f"not a publish request: {type(exc).__name__}: {exc}"))
        return JSONResponse({"messageIds": ids})

    async def replay_api(request: Request) -> Response:
        if _cross_site(request):
            return JSONResponse({"error": {"message": "cross-site request"}}, status_code=403)
        name = (
            f"projects/{request.path_params['project']}/subscriptions/{request.path_params['id']}"
        )
        try:
            await broker.replay(name, request.path_params["message"])
        except BrokerError as exc:
            return _error(exc)
        return JSONResponse({})

    async def replay_form(request: Request) -> Response:
        if _cross_site(request):
            return HTMLResponse("cross-site request refused", status_code=403)
        # The page's form is urlencoded: the standard library reads it (no multipart needed).
        try:
            form = parse_qs((await request.body()).decode("latin-1"), max_num_fields=10)
        except ValueError:
            return HTMLResponse("too many form fields", status_code=400)
        subscription, message = form.get("subscription", [""])[0], form.get("message", [""])[0]
        if not subscription or not message:
            return HTMLResponse("subscription and message are required", status_code=400)
        try:
            await broker.replay(subscription, message)
        except BrokerError as exc:
            return HTMLResponse(html.escape(str(exc)), status_code=_STATUS.get(exc.status, 500))
        return RedirectResponse("/", status_code=303)

    async def page(_request: Request) -> Response:
        return HTMLResponse(render_page(broker))

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/certs", certs),
            Route("/replay", replay_form, methods=["POST"]),
            Route("/v1/broker", state),
            Route("/v1/projects/{project}/topics", topics),
            Route("/v1/projects/{project}/subscriptions", subscriptions),
            Route("/v1/projects/{project}/subscriptions/{id}/messages", messages),
            Route(
                "/v1/projects/{project}/subscriptions/{id}/messages/{message}:replay",
                replay_api,
                methods=["POST"],
            ),
            Route("/v1/projects/{project}/topics/{id}:publish", publish, methods=["POST"]),
        ]
    )
    return LocalOnly(app, also=host)


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } code { font-size: 12px; } .bad { color: #a00; }
.data { max-width: 40em; overflow-wrap: anywhere; font-family: monospace; font-size: 12px; }
"""


def _cell(value: object) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def _preview(data: bytes) -> str:
    text = data[:_PREVIEW].decode("utf-8", errors="replace")
    return text + ("…" if len(data) > _PREVIEW else "")


def _attributes(pending: Pending) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(pending.message.attributes.items()))


def _message_rows(worker: SubscriptionWorker, state: str, items: list[Pending]) -> list[str]:
    rows = []
    now = time.time()
    for pending in items:
        message = pending.message
        action = ""
        if state == "dead-lettered":
            name, message_id = html.escape(worker.delivery.name), html.escape(message.message_id)
            action = (
                '<form method="post" action="/replay">'
                f'<input type="hidden" name="subscription" value="{name}">'
                f'<input type="hidden" name="message" value="{message_id}">'
                '<button type="submit">Replay</button></form>'
            )
        due = "" if state != "waiting" else f"in {max(pending.due - now, 0):.1f} s"
        rows.append(
            "<tr>"
            + _cell(worker.delivery.name.rsplit("/", 1)[-1])
            + _cell(message.message_id)
            + _cell(state)
            + _cell(pending.attempts)
            + _cell(due)
            + _cell(message.ordering_key)
            + f'<td class="data">{html.escape(_attributes(pending))}</td>'
            + f'<td class="data">{html.escape(_preview(message.data))}</td>'
            + f'<td class="bad">{html.escape(pending.last_error or "")}</td>'
            + f"<td>{action}</td></tr>"
        )
    return rows


def render_page(broker: Broker, limit: int = 100) -> str:
    """The web page: topics, subscriptions, messages in flight, waiting and dead-lettered;
    Cloud Tasks queues and their tasks."""
    state = broker.describe()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>homing broker</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>homing local push broker</h1>",
        f"<p>{state['published']} messages published since start; data in "
        f"<code>{html.escape(broker.path)}</code></p>",
        "<h2>Topics</h2><ul>",
        *(f"<li><code>{html.escape(name)}</code></li>" for name in state["topics"]),
        "</ul><h2>Subscriptions</h2>",
        "<table><tr><th>Subscription</th><th>Topic</th><th>Endpoint</th><th>Window</th>"
        "<th>In flight</th><th>Waiting</th><th>Acked</th><th>Nacked</th><th>Dead letters</th>"
        "<th>Last failure</th></tr>",
    ]
    for item in state["subscriptions"]:
        parts.append(
            "<tr>"
            + "".join(
                _cell(item[key] if item[key] is not None else "")
                for key in (
                    "name",
                    "topic",
                    "endpoint",
                    "window",
                    "in_flight",
                    "backlog",
                    "acked",
                    "nacked",
                    "dead_lettered",
                )
            )
            + f'<td class="bad">{html.escape(item["last_failure"] or "")}</td></tr>'
        )
    parts.append("</table><h2>Messages</h2>")
    parts.append(
        "<table><tr><th>Subscription</th><th>Message id</th><th>State</th><th>Attempts</th>"
        "<th>Next attempt</th><th>Ordering key</th><th>Attributes</th><th>Data</th>"
        "<th>Last error</th><th></th></tr>"
    )
    for item in state["subscriptions"]:
        worker = broker.worker(item["name"])
        parts += _message_rows(worker, "in flight", list(worker.in_flight.values())[:limit])
        parts += _message_rows(worker, "dead-lettered", list(worker.dead.values())[:limit])
        parts += _message_rows(worker, "waiting", worker.waiting()[:limit])
    parts.append("</table>")
    if broker.cloud_tasks is not None:
        parts += _task_sections(broker.cloud_tasks.describe(), broker.cloud_tasks.clock(), limit)
    parts.append("</body></html>")
    return "".join(parts)


def _task_sections(queues: list[dict[str, Any]], now: float, limit: int) -> list[str]:
    """The Cloud Tasks queues, and the tasks each still owes (at most ``limit`` a queue)."""
    parts = [
        "<h2>Cloud Tasks queues</h2>",
        "<table><tr><th>Queue</th><th>Dispatches/s</th><th>Concurrent</th><th>Max attempts</th>"
        "<th>Backoff</th><th>In flight</th><th>Tasks</th><th>Held (Retry-After)</th></tr>",
    ]
    for queue in queues:
        held = f"{queue['held_for']:.1f} s" if queue["held_for"] else ""
        parts.append(
            "<tr>"
            + _cell(queue["name"])
            + _cell(f"{queue['max_dispatches_per_second']:g}")
            + _cell(queue["max_concurrent_dispatches"])
            + _cell(queue["max_attempts"])
            + _cell(queue["backoff"])
            + _cell(queue["in_flight"])
            + _cell(len(queue["tasks"]))
            + _cell(held)
            + "</tr>"
        )
    parts.append(
        "</table><h2>Tasks</h2><table><tr><th>Queue</th><th>Task</th><th>Next attempt</th>"
        "<th>Attempts</th><th>Responses</th><th>URL</th><th>Body</th><th>Last error</th></tr>"
    )
    for queue in queues:
        for task in queue["tasks"][:limit]:
            due = task.schedule_time.timestamp() - now
            last = task.last_attempt.response_status.message if "last_attempt" in task else ""
            parts.append(
                "<tr>"
                + _cell(queue["name"].rsplit("/", 1)[-1])
                + _cell(task.name.rsplit("/", 1)[-1])
                + _cell(f"in {due:.1f} s" if due > 0 else "due")
                + _cell(task.dispatch_count)
                + _cell(task.response_count)
                + _cell(task.http_request.url)
                + f'<td class="data">{html.escape(_preview(task.http_request.body))}</td>'
                + f'<td class="bad">{html.escape(last)}</td></tr>'
            )
    parts.append("</table>")
    return parts
