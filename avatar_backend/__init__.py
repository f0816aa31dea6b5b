"""Real-time generative avatar backend for games: gRPC gateway, LiveAct worker, media and clients."""

__version__ = "0.1.0"
