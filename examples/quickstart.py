import os

from fastapi import FastAPI
from pydantic import BaseModel

from homing import Homing, KeyRing, LoopbackPublisher, Signer

homing = Homing(
    signer=Signer(KeyRing.from_string(os.environ["HOMING_SIGNING_KEYS"])),  # `homing keys new`
    publisher=LoopbackPublisher("http://127.0.0.1:8000/events"),  # Pub/Sub in production
)


@homing.event("user.name.changed")
class UserNameChanged(BaseModel):
    user_id: int
    new_name: str


@homing.handler(UserNameChanged)
async def send_email(event: UserNameChanged) -> None:
    print(f"emailing user {event.user_id}: your name is now {event.new_name}")


app = FastAPI(lifespan=homing.lifespan)
app.include_router(homing.router())  # POST /events: verify, decode, dedupe, run the handler


@app.post("/change-name")
async def change_name(user_id: int, name: str) -> dict[str, str]:
    # Published before the response: on Cloud Run the CPU is gone once we answer.
    event_id = await homing.publish(UserNameChanged(user_id=user_id, new_name=name))
    return {"event_id": event_id}
