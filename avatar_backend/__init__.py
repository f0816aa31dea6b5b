"""Real-time generative avatar backend for games: gRPC gateway, LiveAct worker, media and clients."""

__version__ = "0.1.0"
#: The character every server ships with (registered at start-up), so that a first session needs no files.
DEFAULT_CHARACTER_ID = "default"
