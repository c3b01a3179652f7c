"""Moved to :mod:`tests.support.emulator`; kept for the benchmarks, which import it from here."""

from tests.support.emulator import find_emulator, running_emulator

__all__ = ["find_emulator", "running_emulator"]
