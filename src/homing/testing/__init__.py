"""Testing a homing service: a pytest plugin, push helpers and assertions.

The plugin is registered with pytest when homing is installed (entry point ``pytest11``), so
its fixtures need no import:

- ``homing``: your service's :class:`~homing.Homing` — override this fixture, or name it with
  ``homing_app = "module:attribute"`` in pytest's configuration (or ``HOMING_APP``);
- ``homing_publisher``: a :class:`RecordingPublisher` installed as the service's publisher for
  the test: it records what was published; ``run_handlers()`` then delivers it;
- ``homing_inline``: the same, running each event's handler as it is published.

Helpers: :func:`push` (a signed — or deliberately broken — push into a ``Homing`` or an ASGI
app, returning the answer), :func:`push_body`, :func:`assert_handled`,
:func:`assert_published`. ``docs/testing.md`` has a worked example.
"""

from homing.testing._envelopes import DEFECTS, Defect, push_body
from homing.testing._publisher import RecordingPublisher, assert_published
from homing.testing._push import assert_handled, push, result_of

__all__ = [
    "DEFECTS",
    "Defect",
    "RecordingPublisher",
    "assert_handled",
    "assert_published",
    "push",
    "push_body",
    "result_of",
]
