"""The quickstart as a Flask app: `homing.flask` serves POST /events and publishes synchronously.

    export HOMING_SIGNING_KEYS=$(.venv/bin/homing keys new)
    cd examples && ../.venv/bin/gunicorn --workers 2 --threads 4 -b 127.0.0.1:8000 \\
        flask_quickstart:app
    curl -X POST 'http://127.0.0.1:8000/change-name?user_id=7&name=Zoe'
"""

from __future__ import annotations

from flask import Flask, request
from pydantic import BaseModel

from homing import Homing, LoopbackPublisher, Settings, Signer
from homing.errors import ConfigurationError
from homing.flask import FlaskHoming

settings = Settings.from_env()
if settings.signing_keys is None:
    raise ConfigurationError("set HOMING_SIGNING_KEYS (`homing keys new` makes one)")
homing = Homing(
    signer=Signer(settings.signing_keys),
    # Each gunicorn worker delivers back to the server (Pub/Sub does this in production).
    publisher=LoopbackPublisher(settings.loopback_url or "http://127.0.0.1:8000/events"),
)


@homing.event("user.name.changed")
class UserNameChanged(BaseModel):
    user_id: int
    new_name: str


@homing.handler(UserNameChanged)
async def send_email(event: UserNameChanged) -> None:
    print(f"emailing user {event.user_id}: your name is now {event.new_name}", flush=True)


app = Flask(__name__)
events = FlaskHoming(homing, app)  # POST /events: verify, decode, dedupe, run the handler


@app.post("/change-name")
def change_name() -> dict[str, str]:
    event = UserNameChanged(user_id=int(request.args["user_id"]), new_name=request.args["name"])
    # Published before the response: on Cloud Run the CPU is gone once we answer.
    return {"event_id": events.publish(event)}
