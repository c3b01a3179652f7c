"""The README's quickstart is real code: it is examples/quickstart.py, and it works."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys

import httpx
import pytest

from homing import LoopbackPublisher
from tests.support import ROOT


def test_the_readme_shows_the_quickstart_file_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    code = (ROOT / "examples" / "quickstart.py").read_text()
    assert code in blocks
    assert len(code.strip().splitlines()) <= 35  # "under 30 lines" of code, blank lines aside
    assert sum(1 for line in code.splitlines() if line.strip()) < 30


async def test_the_quickstart_publishes_and_handles(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOMING_SIGNING_KEYS", "k1:a-quickstart-secret-for-tests")
    monkeypatch.delitem(sys.modules, "quickstart", raising=False)
    quickstart = importlib.import_module("quickstart")
    transport = httpx.ASGITransport(app=quickstart.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        loopback = LoopbackPublisher("http://127.0.0.1:8000/events", client=client)
        quickstart.homing.publisher = loopback
        response = await client.post("/change-name", params={"user_id": 7, "name": "Zoë"})
        assert response.status_code == 200
        await asyncio.wait_for(loopback.join(), 5)
    assert "emailing user 7: your name is now Zoë" in capsys.readouterr().out
    assert loopback.delivered == 1
