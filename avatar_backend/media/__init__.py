"""Media between the gRPC gateway and the worker; no model knowledge, no gRPC.

- :mod:`.opus`: Opus decoder (PLC, FEC) and encoder over the system libopus
- :mod:`.jitter`: per-stream jitter buffer: reorder, de-duplicate, conceal; Opus or PCM16 in, float32 out
- :mod:`.resample`: streaming resampling to the model's 16 kHz
- :mod:`.encoders`: video frame encoders (JPEG, raw RGB) and the codec registry
- :mod:`.clock`: frame times on the session's audio clock
- :mod:`.audio_file`: audio files (any format FFmpeg reads) to mono int16 PCM
- :mod:`.bench`: CPU cost of the gateway's media work per video frame

Import the submodules directly: each pulls in only the native libraries it needs.
"""
