"""A publisher for tests: records what a service published, and can run its handlers inline."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from homing.app import Homing
from homing.errors import ConfigurationError
from homing.events import decode_event
from homing.outcome import PushResult
from homing.publishers.base import OutgoingMessage
from homing.publishers.memory import MemoryPublisher
from homing.testing._push import push


class RecordingPublisher(MemoryPublisher):
    """Records every event a service publishes; with ``handle=True`` also handles each at once.

    Captured (the default), published messages wait in :attr:`messages` until
    :meth:`run_handlers` pushes them into the service; inline (``handle=True``), each publish
    is pushed through the service's full push pipeline (signature check, dedupe, decode,
    handler) before ``publish()`` returns, and the answer lands in :attr:`results`.

    Args:
        homing: the service whose registry decodes the events and whose pipeline handles them;
            when the service is built around its publisher (an app factory taking one), set
            :attr:`homing` once it exists.
        handle: run the handlers inline, as each event is published.

    Example::

        recorder = RecordingPublisher(homing)
        homing.publisher = recorder
        ...  # the code under test publishes
        recorder.assert_published(UserNameChanged(user_id=1, old_name="a", new_name="b"))
        assert_handled(*await recorder.run_handlers())
    """

    def __init__(self, homing: Homing | None = None, *, handle: bool = False) -> None:
        super().__init__(subscription="projects/test/subscriptions/homing-recorder")
        self._homing = homing
        self.handle = handle
        #: Every message published, in order (never emptied by :meth:`run_handlers`).
        self.published: list[OutgoingMessage] = []
        #: How each pushed message was answered, in order.
        self.results: list[PushResult] = []

    @property
    def homing(self) -> Homing:
        """The service the recorder decodes and handles events for."""
        if self._homing is None:
            raise ConfigurationError(
                "this RecordingPublisher has no service yet: set recorder.homing = <your Homing>"
            )
        return self._homing

    @homing.setter
    def homing(self, homing: Homing) -> None:
        self._homing = homing

    async def _send(self, message: OutgoingMessage) -> str:
        message_id = await super()._send(message)
        self.published.append(message)
        if self.handle:
            self.messages.remove((message_id, message))  # handled now, not waiting
            body = self.envelope(message_id, message)
            self.results.append(await self.homing.handle_push(body))
        return message_id

    @property
    def events(self) -> list[BaseModel]:
        """The published events, decoded by their models, in order."""
        registry = self.homing.events
        decoded = []
        for message in self.published:
            model = registry.model(message.event_type)
            if model is None:
                raise AssertionError(f"published an unregistered event {message.event_type!r}")
            decoded.append(decode_event(model, message.data))
        return decoded

    async def run_handlers(self, target: Any = None, *, path: str = "/events") -> list[PushResult]:
        """Push every waiting message into the service, in order; return the answers.

        ``target`` is the ASGI app to POST them to (``path``); by default the messages go
        straight into ``homing``'s push pipeline. Handlers that publish add to the queue,
        and those events are pushed too.
        """
        answered: list[PushResult] = []
        while self.messages:
            message_id, message = self.messages.pop(0)
            body = self.envelope(message_id, message)
            into = self.homing if target is None else target
            answered.append(await push(into, body, homing=self.homing, path=path))
        self.results.extend(answered)
        return answered

    def assert_published(self, *expected: BaseModel | type[BaseModel]) -> None:
        """Assert exactly these events were published, in this order.

        Each expected item is an event (compared by value) or a model class (any event of it).
        """
        assert_published(self, *expected)

    def clear(self) -> None:
        """Forget what was published, waiting and answered."""
        self.messages.clear()
        self.published.clear()
        self.results.clear()


def assert_published(recorder: RecordingPublisher, *expected: BaseModel | type[BaseModel]) -> None:
    """Assert ``recorder`` saw exactly ``expected`` published, in order.

    Each expected item is an event (compared by value) or a model class (any event of it);
    with nothing expected, asserts that nothing was published.
    """
    events = recorder.events
    matches = len(events) == len(expected) and all(
        isinstance(event, want) if isinstance(want, type) else event == want
        for event, want in zip(events, expected, strict=True)
    )
    if not matches:
        shown = "\n".join(f"  {_show(e)}" for e in events) or "  (nothing)"
        wanted = "\n".join(f"  {_show(e)}" for e in expected) or "  (nothing)"
        raise AssertionError(f"published:\n{shown}\nexpected:\n{wanted}")


def _show(item: BaseModel | type[BaseModel]) -> str:
    if isinstance(item, type):
        return f"any {item.__qualname__}"
    return repr(item)
