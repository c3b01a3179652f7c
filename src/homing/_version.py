"""The version of homing: its one source (the wheel's metadata, ``homing --version`` and
``homing.__version__`` read it)."""

__version__ = "0.1.0"
