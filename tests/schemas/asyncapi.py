"""The published AsyncAPI 3.0 JSON Schema, from the npm package ``@asyncapi/specs``.

Pinned by version and by the registry's sha512 integrity; fetched once with ``npm pack`` into
``.cache/`` (``make test`` does it) and read from there by the tests. Run as a script to fetch.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@asyncapi/specs"
VERSION = "6.11.1"
INTEGRITY = (
    "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/"
    "klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
)
MEMBER = "package/schemas/3.0.0.json"
CACHED = Path(__file__).resolve().parents[2] / ".cache" / f"asyncapi-specs-{VERSION}" / "3.0.0.json"


def fetch() -> Path:
    """The cached schema, fetched and checked first when missing. Raises ``RuntimeError``."""
    if CACHED.is_file():
        return CACHED
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed: it fetches {PACKAGE}@{VERSION}")
    with tempfile.TemporaryDirectory() as scratch:
        run = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", scratch, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(f"npm pack {PACKAGE}@{VERSION} failed: {run.stderr.strip()[-500:]}")
        [tarball] = Path(scratch).glob("*.tgz")
        packed = tarball.read_bytes()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(packed).digest()).decode()
    if digest != INTEGRITY:
        raise RuntimeError(f"{PACKAGE}@{VERSION} does not match its pinned integrity: {digest}")
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise RuntimeError(f"{PACKAGE}@{VERSION} has no {MEMBER}")
        schema = member.read()
    json.loads(schema)  # whole and valid JSON before it is kept
    CACHED.parent.mkdir(parents=True, exist_ok=True)
    partial = CACHED.with_suffix(".partial")
    partial.write_bytes(schema)
    partial.replace(CACHED)
    return CACHED


if __name__ == "__main__":
    try:
        print(f"AsyncAPI 3.0.0 schema: {fetch()}")
    except RuntimeError as exc:
        # Not fatal here: the test that needs it skips on a laptop and fails in CI.
        print(f"AsyncAPI 3.0.0 schema not fetched: {exc}", file=sys.stderr)
