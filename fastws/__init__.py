"""fastws: a fast, strict WebSocket server and client (placeholder while the package is built)."""
from ._version import __version__
