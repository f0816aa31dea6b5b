"""Fixtures of the end-to-end tests: one server per module, real speech."""

from __future__ import annotations

import numpy as np
import pytest
from e2e_helpers import RATE, SENTENCE, Server, espeak


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """About 3 s of real speech as int16 at 48 kHz."""
    return espeak(SENTENCE, RATE, tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("data")).start()
    yield srv
    assert srv.stop() == 0, "".join(srv.output[-40:])
