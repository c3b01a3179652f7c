"""What the tests share: processes, ports, the Pub/Sub emulator, a throwaway PostgreSQL
cluster, waiting for a condition, and the rule for tools a test needs (required in CI)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
