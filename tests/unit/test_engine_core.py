"""The engine core's socket: only front-ends that hold the pod's key are read (the messages are pickles)."""

from __future__ import annotations

import pickle
import secrets
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from qcat.worker.engine_core import Core
from qcat.worker.remote import CoreClient
from qcat.worker.settings import WorkerSettings


def test_the_core_reads_only_front_ends_that_prove_the_pod_s_key(tmp_path: Path) -> None:
    address, key = str(tmp_path / "core.sock"), secrets.token_bytes(32)
    settings = WorkerSettings(base_model="tiny-qwen3", device="cpu", dtype="float32")
    threading.Thread(target=Core(settings, address, key).serve, daemon=True).start()
    deadline = time.monotonic() + 10
    while not Path(address).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(AuthenticationError):
        Client(address, family="AF_UNIX", authkey=secrets.token_bytes(32))
    keyless = Client(address, family="AF_UNIX")
    keyless.send(("load", None))
    with pytest.raises(pickle.UnpicklingError):  # the core's challenge arrives, never an answer
        keyless.recv()
    served = CoreClient(address, key).load(None)  # the core still accepts, and answers the right key
    assert served.model_name == "tiny-qwen3"
    assert served.preferred_batch > 0
