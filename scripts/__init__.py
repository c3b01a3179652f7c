"""Development scripts, run as ``python scripts/NAME.py`` (and imported by their tests)."""
