"""The project's clock (see :mod:`overlay.clock`): one instance is shared by a whole network."""

from overlay.clock import TEST_EPOCH_MS, Clock

__all__ = ["TEST_EPOCH_MS", "Clock"]
