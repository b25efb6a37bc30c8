"""bf16 autocast runs only where it is asked for and the device has fast bf16 kernels."""

from __future__ import annotations

import pytest
import torch

from tokenunify.training import devices
from tokenunify.training.devices import autocast, effective_bf16

CPU = torch.device("cpu")


def _output_dtype(enabled: bool) -> torch.dtype:
    layer = torch.nn.Linear(4, 4)
    with autocast(CPU, enabled):
        return layer(torch.randn(2, 4)).dtype


def test_cpu_without_native_bf16_runs_fp32_and_says_so(monkeypatch):
    monkeypatch.setenv("TOKENUNIFY_CPU_BF16", "0")
    devices._warn_cpu_fp32.cache_clear()
    with pytest.warns(RuntimeWarning, match="no native bf16 kernels.*running fp32"):
        assert effective_bf16(CPU, True) is False
    assert _output_dtype(True) == torch.float32


def test_cpu_with_native_bf16_runs_bf16(monkeypatch):
    monkeypatch.setenv("TOKENUNIFY_CPU_BF16", "1")
    assert effective_bf16(CPU, True) is True
    assert _output_dtype(True) == torch.bfloat16


def test_fp32_when_not_asked_and_bf16_on_cuda_whatever_the_cpu(monkeypatch):
    monkeypatch.setenv("TOKENUNIFY_CPU_BF16", "0")
    assert effective_bf16(CPU, False) is False
    assert _output_dtype(False) == torch.float32
    # no CUDA needed: the decision is made on the device type alone
    assert effective_bf16(torch.device("cuda", 0), True) is True


def test_native_check_agrees_with_the_dispatch_level():
    # oneDNN's bf16 paths need AVX-512 (or AMX); an AVX2 dispatch must not claim them
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT", "NO AVX"):
        assert devices._native_bf16() is False
