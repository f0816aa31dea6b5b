"""The generator worker: the only package that meets both the gateway's world and the model's.

- ``link``: the ZeroMQ link, both ends (the gateway imports it; no torch).
- ``process``: the gateway's supervisor of the worker process (no torch).
- ``main`` / ``__main__``: the worker process's entry point: flags, generator, executor, engine.
- ``engine``: the core loop: requests in; schedule -> execute -> update; FrameBlocks out.
- ``requests``: one handler per link message (sessions, voice, controls, NPC management).
- ``executor``: where a batch of blocks runs (this process, one device).
- ``scheduler``: per-session state and the policy of which blocks run next, and together.
- ``memory_pool``: live, resident and on-disk NPC memories.
- ``characters``: character conditionings prepared once per size.
- ``telemetry``: NVML device readings.
- ``in_process``: the engine in a thread of the gateway's process (tests, embedding).
- ``ranks``: several devices: rank 0 runs the engine, the other ranks follow it.
"""
