"""The C kernels against plain references: the fused scan and the channel norm, values and gradients."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import tokenunify.models.native as native
from tokenunify.models.channel_norm import channel_norm, channel_norm_reference, use_reference_norm
from tokenunify.models.native_scan import selective_scan_native
from tokenunify.models.scan import selective_scan, selective_scan_ref
from tokenunify.models.tokenunify_net import build_tokenunify

needs_native = pytest.mark.skipif(not native.native_available(), reason=f"C kernels unavailable: {native.failure()}")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
CL = torch.channels_last_3d


def _scan_inputs(batch: int, dim: int, n: int, length: int, dtype: torch.dtype = torch.float32,
                 time_major: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def seq(scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        shape = (batch, length, dim) if time_major else (batch, dim, length)
        t = torch.randn(*shape, generator=g) * scale + shift
        return (t.transpose(1, 2) if time_major else t).to(dtype).requires_grad_()

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    return {"u": seq(), "delta": seq(0.5, -1.0),
            "A": (-(torch.rand(dim, n, generator=g) * n + 0.5)).to(dtype).requires_grad_(),
            "B": r(batch, n, length), "C": r(batch, n, length), "D": r(dim), "z": seq(), "delta_bias": r(dim, scale=0.3)}


def _close(ref: torch.Tensor, new: torch.Tensor, rtol: float, what: str) -> None:
    err = (ref.float() - new.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)
    assert err <= rtol, f"{what}: max error {err:.2e} relative to max |ref|"


def _check_scan(x: dict[str, torch.Tensor], rtol: float = 1e-5) -> None:
    y_ref = selective_scan_ref(**x, delta_softplus=True)
    y = selective_scan_native(**x, delta_softplus=True)
    assert y.shape == y_ref.shape and y.dtype == x["u"].dtype
    _close(y_ref, y, rtol, "output")
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    inputs = [x[k] for k in NAMES]
    for name, a, b in zip(NAMES, torch.autograd.grad(y_ref, inputs, gy), torch.autograd.grad(y, inputs, gy)):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        _close(a, b, rtol, f"grad {name}")


# (batch, dim, d_state, length): d_state 16 (the inlined copy) and others; lengths off
# the 64-step checkpoint grid, one step, and several chunks
SHAPES = [(2, 5, 16, 70), (1, 3, 7, 1), (3, 4, 16, 129), (1, 2, 1, 64), (2, 3, 4, 200)]


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}d{}n{}L{}".format(*s))
def test_native_scan_matches_sequential_loop(shape: tuple[int, int, int, int], threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_scan(_scan_inputs(*shape))
    finally:
        torch.set_num_threads(before)


@needs_native
def test_native_scan_time_major_inputs_bf16_and_autocast() -> None:
    # the mixer hands over (B, L, D) tensors viewed as (B, D, L): same result, no copy needed
    _check_scan(_scan_inputs(2, 6, 16, 90, time_major=True, seed=3))
    # bf16 inputs: both run in fp32 from the same inputs, then round to bf16
    _check_scan(_scan_inputs(2, 6, 16, 70, dtype=torch.bfloat16, seed=4), rtol=2e-2)
    # under autocast the mixer hands over bf16 projections; the recurrence must still run in fp32
    x = {k: v.detach() for k, v in _scan_inputs(1, 4, 8, 40, dtype=torch.bfloat16, seed=5).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan_native(**x, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    y_ref = selective_scan_ref(**{k: v.float() for k, v in x.items()}, delta_softplus=True)
    _close(y_ref, y, 1e-2, "autocast output")  # one bf16 rounding of the output


@needs_native
def test_native_scan_long_decay_stays_finite() -> None:
    x = _scan_inputs(1, 3, 4, 50, seed=11)
    x["delta"] = (x["delta"].detach() + 8.0).requires_grad_()
    x["A"] = (x["A"].detach() * 20).requires_grad_()
    _check_scan(x)


def test_dispatcher_routes_cpu_by_native_mode(monkeypatch) -> None:
    import tokenunify.models.native_scan as native_scan
    import tokenunify.models.scan as scan_module

    x = {k: v.detach() for k, v in _scan_inputs(1, 2, 3, 70).items()}
    opts = {"delta_softplus": True}
    torch.testing.assert_close(selective_scan(**x, **opts), selective_scan_ref(**x, **opts), rtol=1e-5, atol=1e-6)
    calls: list[str] = []
    monkeypatch.setattr(scan_module, "selective_scan_chunked", lambda *a, **k: calls.append("chunked") or "c")
    monkeypatch.setattr(native_scan, "selective_scan_native", lambda *a, **k: calls.append("native") or "n")
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "off")
    assert scan_module.selective_scan(**x) == "c"
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "auto")
    expected = "n" if native.native_available() else "c"
    assert scan_module.selective_scan(**x) == expected
    assert calls == ["chunked", "native" if expected == "n" else "chunked"]


def test_native_modes_and_build_failure(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "sometimes")
    with pytest.raises(ValueError, match="TOKENUNIFY_NATIVE"):
        native.library()
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "off")
    assert native.library() is None
    # a fresh process state with no usable compiler: auto warns once and falls back, on fails
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setenv("TOKENUNIFY_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "auto")
    with pytest.warns(RuntimeWarning, match="no-such-compiler-here"):
        assert native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None  # once only
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "on")
    with pytest.raises(native.NativeError, match="no-such-compiler-here"):
        native.library()


@needs_native
def test_native_build_is_cached_by_source_and_cpu(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setenv("TOKENUNIFY_CACHE", str(tmp_path))
    assert native.library() is not None
    built = list(tmp_path.glob("kernels_*.so"))
    assert len(built) == 1 and not [p for p in tmp_path.iterdir() if p.is_dir()]  # no half-built leftovers
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_lib", None)
    assert native.library() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    # another CPU (a shared home folder on a mixed cluster) gets its own build
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_cpu_key", lambda: "some other cpu")
    assert native.library() is not None and len(list(tmp_path.glob("kernels_*.so"))) == 2


@needs_native
def test_kernels_share_torchs_openmp_runtime() -> None:
    runtimes = native.openmp_runtimes()
    if not runtimes:
        pytest.skip("no /proc/self/maps to read the loaded runtimes from")
    assert len(runtimes) == 1, runtimes


def _norm_pair(x: torch.Tensor, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    c = x.shape[1]
    w, b = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    if x.dtype == torch.float64:
        w, b = w.double(), b.double()
    one = tuple(t.detach().clone().requires_grad_() for t in (x, w, b))
    two = tuple(t.detach().clone().requires_grad_() for t in (x, w, b))
    return one, two


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_norm_matches_layer_norm(layout: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 24, 4, 6, 8, generator=g) * 3 + 1).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    (x1, w1, b1), (x2, w2, b2) = _norm_pair(x)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y1 = channel_norm(x1, w1, b1, 1e-3)
        y2 = channel_norm_reference(x2, w2, b2, 1e-3)
    assert y1.dtype == y2.dtype == dtype and y1.shape == x.shape
    _close(y2, y1, 1e-5 if dtype == torch.float32 else 1e-2, "output")
    gy = torch.randn(y1.shape, generator=g)
    y1.backward(gy)
    y2.backward(gy)
    assert x1.grad.dtype == dtype
    if dtype == torch.float32:
        for name, a, b in (("x", x2, x1), ("weight", w2, w1), ("bias", b2, b1)):
            _close(a.grad, b.grad, 1e-4, f"grad {name}")
        return
    # bf16: both routes round; ours must be as close to the float64 truth as the reference
    (x3, w3, b3), _ = _norm_pair(x.double())
    channel_norm_reference(x3, w3, b3, 1e-3).backward(gy.to(y1.dtype).double())
    for name, truth, ref, ours in (("x", x3, x2, x1), ("weight", w3, w2, w1), ("bias", b3, b2, b1)):
        scale = truth.grad.abs().max()
        err_ours = ((ours.grad.double() - truth.grad).abs().max() / scale).item()
        err_ref = ((ref.grad.double() - truth.grad).abs().max() / scale).item()
        assert err_ours <= max(1.5 * err_ref, 1e-3), f"grad {name}: {err_ours:.2e} against the reference's {err_ref:.2e}"


def test_channel_norm_gradcheck_and_errors() -> None:
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)  # float64: the PyTorch route
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: channel_norm(*t, 1e-3), (x, w, b))
    torch.testing.assert_close(channel_norm(x, w, b, 1e-3), channel_norm_reference(x, w, b, 1e-3))
    with pytest.raises(ValueError, match="channel_norm needs"):
        channel_norm(x, w[:4], b, 1e-3)
    with use_reference_norm():
        out = channel_norm(x, w, b, 1e-3)
    torch.testing.assert_close(out, F.layer_norm(x.movedim(1, -1), (5,), w, b, 1e-3).movedim(-1, 1))


def test_channel_norm_without_kernels_takes_the_plain_route_on_channels_last(monkeypatch) -> None:
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "off")
    x = torch.randn(2, 8, 3, 4, 5).contiguous(memory_format=CL)
    w, b = torch.rand(8), torch.randn(8)
    assert torch.equal(channel_norm(x, w, b, 1e-3), channel_norm_reference(x, w, b, 1e-3))


@needs_native
def test_channel_norm_native_threads_agree() -> None:
    x = torch.randn(2, 16, 5, 7, 9).bfloat16().contiguous(memory_format=CL)  # bf16: the kernel's route
    grads = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            (x1, w1, b1), _ = _norm_pair(x)
            channel_norm(x1, w1, b1, 1e-3).float().square().sum().backward()
            grads.append((x1.grad, w1.grad, b1.grad))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("full_res", ["lean", "block"])
def test_network_same_function_in_either_layout_and_route(full_res: str, monkeypatch) -> None:
    """Channels-last weights, the norm kernel and the native scan change speed, not the network."""
    torch.manual_seed(0)
    fast = build_tokenunify("micro", "mamba", out_channels=3, anisotropic=False, full_res=full_res)
    plain = build_tokenunify("micro", "mamba", out_channels=3, anisotropic=False, full_res=full_res,
                             channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert any(p.dim() == 5 and p.is_contiguous(memory_format=CL) and not p.is_contiguous()
               for p in fast.parameters())
    x = torch.rand(1, 1, 16, 32, 32)
    y_fast = fast(x)
    monkeypatch.setenv("TOKENUNIFY_NATIVE", "off")
    with use_reference_norm():
        y_plain = plain(x)
    _close(y_plain, y_fast, 1e-4, "logits")
    y_fast.square().mean().backward()
    y_plain.square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        if a.grad is not None:
            _close(a.grad, b.grad, 2e-3, f"grad {name}")
