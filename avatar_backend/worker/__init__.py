"""The generator worker: the only package that meets both the gateway's world and the model's.

- ``link``: the ZeroMQ link, both ends (the gateway imports it; no torch).
- ``process``: the gateway's supervisor of the worker process (no torch).
- ``main`` / ``__main__``: the worker process: loop, request handling, block generation.
- ``scheduler``: per-session state and the policy of which block runs next.
- ``memory_pool``: live, resident and on-disk NPC memories.
- ``telemetry``: NVML device readings.
- ``fake_pipeline``: a numpy stand-in for the generator, for tests only.
"""
