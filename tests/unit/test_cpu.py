"""Freed-memory reuse on the CPU (qcat/pytorch/cpu.py). The setting is process-wide, so each case runs in a fresh
process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from qcat.pytorch import model
from qcat.settings import EngineSettings

# 48 MiB is above glibc's largest mmap threshold (32 MiB): by default every such allocation is a fresh mmap whose
# 12,288 pages fault in again, as an activation tensor of a large batch does on every forward pass.
ALLOCATE_AND_COUNT_FAULTS = """
import resource, sys, torch
from qcat.pytorch.cpu import keep_freed_memory_for_reuse
if sys.argv[1] == "keep":
    assert keep_freed_memory_for_reuse()
for _ in range(3):
    torch.empty(48 * 2**20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(48 * 2**20, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    command = [sys.executable, "-c", ALLOCATE_AND_COUNT_FAULTS, mode]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(output.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_reused_instead_of_faulted_in_again() -> None:
    assert page_faults("default") > 50_000  # ten allocations x 12,288 pages, give or take
    assert page_faults("keep") < 1_000


def test_loading_a_model_on_the_cpu_applies_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int | None, bool]] = []
    monkeypatch.setattr(model, "configure_cpu", lambda threads, keep: calls.append((threads, keep)))
    settings = EngineSettings(base_model="tiny-qwen3", device="cpu", threads=2, keep_freed_memory=False)
    model.load_configured_base(settings)
    assert calls == [(2, False)]
