"""Tests for tokenunify.tokens.masks, including the no-leak proof."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenunify.tokens import masks
from tokenunify.tokens.masks import (
    MaskSampler,
    NextAllMask,
    NextTokenMask,
    RandomMask,
    TokenMasks,
    available_samplers,
    build_sampler,
    hide_tokens,
    register_sampler,
)

BUILTIN = ["random", "next", "next_all", "any_order"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", BUILTIN)
def test_invariants_over_seeds_and_lengths(name):
    sampler = build_sampler(name)
    for k in [2, 3, 5, 17, 64, 400]:
        for seed in range(25):
            m = sampler(3, k, _gen(seed))
            assert m.visible.shape == m.target.shape == (3, k)
            assert m.visible.dtype == m.target.dtype == torch.bool
            assert not (m.visible & m.target).any()
            assert m.visible.any(1).all() and m.target.any(1).all()


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(BUILTIN),
    batch=st.integers(1, 4),
    k=st.integers(2, 80),
    seed=st.integers(0, 2**31),
)
def test_invariants_property(name, batch, k, seed):
    m = build_sampler(name)(batch, k, _gen(seed))
    m.check()
    assert m.visible.shape == (batch, k)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75, 0.9])
def test_random_ratio_is_exact(ratio):
    sampler = RandomMask(ratio)
    for k in [10, 37, 400]:
        m = sampler(6, k, _gen(1))
        expected = round(ratio * k)
        assert (m.target.sum(1) == expected).all()
        assert torch.equal(m.target, ~m.visible)
        assert m.prefix is None
    # Rows differ: the subset is drawn per sample.
    m = sampler(6, 400, _gen(2))
    assert len({tuple(row.tolist()) for row in m.target}) == 6


def test_random_clamps_tiny_sequences_and_rejects_bad_ratio():
    assert (RandomMask(0.9)(4, 2, _gen(0)).target.sum(1) == 1).all()
    assert (RandomMask(0.01)(4, 3, _gen(0)).target.sum(1) == 1).all()
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            RandomMask(bad)


@pytest.mark.parametrize("cls", [NextTokenMask, NextAllMask])
def test_prefix_semantics(cls):
    k = 9
    sampler = cls(min_prefix=2, max_prefix=6)
    seen: set[int] = set()
    for seed in range(60):
        m = sampler(4, k, _gen(seed))
        assert m.prefix is not None and m.prefix.dtype == torch.long
        for b, n in enumerate(m.prefix.tolist()):
            seen.add(n)
            pos = torch.arange(k)
            assert torch.equal(m.visible[b], pos < n)
            assert torch.equal(m.target[b], pos >= n)  # both predict every token from n on
    assert seen == set(range(2, 7))  # uniform over the whole inclusive range


@pytest.mark.parametrize("cls", [NextTokenMask, NextAllMask])
def test_prefix_default_range_and_errors(cls):
    seen = set()
    for seed in range(40):
        seen.update(cls()(8, 4, _gen(seed)).prefix.tolist())
    assert seen == {1, 2, 3}  # [1, K-1]
    assert (cls(max_prefix=1000)(5, 6, _gen(0)).prefix <= 5).all()  # capped at K-1
    with pytest.raises(ValueError, match="no target"):
        cls(min_prefix=5)(1, 5, _gen(0))
    with pytest.raises(ValueError, match="min_prefix"):
        cls(min_prefix=0)
    with pytest.raises(ValueError, match="uniform"):
        cls(distribution="zipf")


def test_next_supervises_at_least_a_quarter_of_the_tokens():
    for k in (4, 7, 64, 256, 257):
        sampler = NextTokenMask()
        lo, hi = sampler.prefix_range(k)
        assert k - hi >= k / 4 and lo == 1
        m = sampler(64, k, _gen(k))
        assert (m.target.sum(1) >= k / 4).all()
        assert int(m.prefix.max()) == hi or k > 64  # the cap is reached (small k: all values drawn)
    assert NextTokenMask(min_targets=0.5).prefix_range(10) == (1, 5)
    with pytest.raises(ValueError, match="fewer than 50%"):
        NextTokenMask(min_prefix=6, min_targets=0.5)(1, 10, _gen(0))
    with pytest.raises(ValueError, match="min_targets"):
        NextTokenMask(min_targets=1.0)


@pytest.mark.parametrize("name", BUILTIN)
def test_deterministic_given_generator(name):
    sampler = build_sampler(name)
    a = sampler(4, 50, _gen(123))
    b = sampler(4, 50, _gen(123))
    assert torch.equal(a.visible, b.visible) and torch.equal(a.target, b.target)
    # Global RNG state must not matter.
    torch.manual_seed(999)
    c = sampler(4, 50, _gen(123))
    assert torch.equal(a.visible, c.visible)
    d = [sampler(4, 50, _gen(s)).target for s in range(5)]
    assert any(not torch.equal(d[0], x) for x in d[1:])


def test_bad_call_arguments():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        RandomMask()(2, 1, _gen(0))
    with pytest.raises(ValueError, match="batch"):
        NextAllMask()(0, 10, _gen(0))


def test_registry_lists_and_errors():
    assert set(BUILTIN) <= set(available_samplers())
    assert isinstance(build_sampler("random", ratio=0.5), RandomMask)
    with pytest.raises(ValueError, match=r"unknown mask sampler 'nope'.*any_order, next, next_all, random"):
        build_sampler("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("random")(NextAllMask)
    with pytest.raises(TypeError):
        register_sampler("not_a_sampler")(int)  # type: ignore[arg-type]


def test_registering_a_new_objective(monkeypatch):
    # A copy of the registry keeps this dummy out of other tests.
    monkeypatch.setattr(masks, "_REGISTRY", dict(masks._REGISTRY))

    @register_sampler("last_half")
    class LastHalf(MaskSampler):
        def sample(self, batch: int, n_tokens: int, generator: torch.Generator) -> TokenMasks:
            pos = torch.arange(n_tokens).expand(batch, n_tokens)
            return TokenMasks(visible=pos < n_tokens // 2, target=pos >= n_tokens // 2)

    assert "last_half" in available_samplers()
    m = build_sampler("last_half")(2, 6, _gen(0))
    assert m.target.sum().item() == 6

    @register_sampler("broken")
    class Broken(MaskSampler):
        def sample(self, batch: int, n_tokens: int, generator: torch.Generator) -> TokenMasks:
            everything = torch.ones(batch, n_tokens, dtype=torch.bool)
            return TokenMasks(visible=everything, target=everything)

    with pytest.raises(ValueError, match="both visible and a target"):
        build_sampler("broken")(2, 6, _gen(0))


# --- the no-leak proof: no target token's content reaches the model input ----


def _cases():
    for name in BUILTIN:
        for use_mask_token in (False, True):
            yield name, use_mask_token


@pytest.mark.parametrize("name,use_mask_token", list(_cases()))
def test_no_target_content_reaches_input(name, use_mask_token):
    b, k, f = 3, 24, 16
    sampler = build_sampler(name)
    for seed in range(10):
        g = _gen(seed)
        m = sampler(b, k, g)
        tokens = torch.randn(b, k, f, generator=g)
        original = tokens.clone()
        mask_token = torch.randn(f, generator=g) if use_mask_token else None
        inp = hide_tokens(tokens, m.visible, mask_token)
        assert torch.equal(tokens, original)  # a copy: the loss still needs the targets

        # 1. The input is a function of the visible tokens only: rewriting every
        #    non-visible token (targets included) leaves it bit-identical.
        other = tokens.clone()
        other[~m.visible] = torch.randn(int((~m.visible).sum()), f, generator=g) * 5
        assert torch.equal(hide_tokens(other, m.visible, mask_token), inp)
        assert torch.equal(inp[m.visible], tokens[m.visible])

        # 2. No target token's feature vector appears anywhere in the input.
        rows = inp.reshape(-1, f)
        for target_vector in tokens[m.target]:
            assert not (rows == target_vector).all(dim=1).any()
        for hidden_vector in tokens[~m.visible]:
            assert not torch.isclose(rows, hidden_vector).all(dim=1).any()


@pytest.mark.parametrize("name,use_mask_token", list(_cases()))
def test_no_gradient_reaches_hidden_tokens(name, use_mask_token):
    b, k, f = 2, 30, 8
    for seed in range(5):
        g = _gen(seed)
        m = build_sampler(name)(b, k, g)
        tokens = torch.randn(b, k, f, generator=g).requires_grad_(True)
        mask_token = torch.randn(f, generator=g).requires_grad_(True) if use_mask_token else None
        weights = torch.randn(b, k, f, generator=g)
        (hide_tokens(tokens, m.visible, mask_token) * weights).sum().backward()
        grad = tokens.grad
        assert grad is not None
        assert torch.count_nonzero(grad[m.target]) == 0
        assert torch.count_nonzero(grad[~m.visible]) == 0
        # Visible tokens do pass through, so the check is not vacuous.
        assert torch.equal(grad[m.visible], weights[m.visible])
        if mask_token is not None:
            assert torch.allclose(mask_token.grad, weights[~m.visible].sum(0), atol=1e-5)


def test_hide_tokens_shape_errors():
    tokens = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="bool mask"):
        hide_tokens(tokens, torch.ones(2, 5))
    with pytest.raises(ValueError, match="bool mask"):
        hide_tokens(tokens, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_token"):
        hide_tokens(tokens, torch.ones(2, 5, dtype=torch.bool), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(B, K, F\)"):
        hide_tokens(torch.zeros(5, 4), torch.ones(5, dtype=torch.bool))


def test_any_order_spans_are_contiguous_runs_of_the_drawn_share():
    sampler = build_sampler("any_order", min_ratio=0.2, max_ratio=0.6, n_spans=2)
    m = sampler(64, 100, _gen(3))
    assert torch.equal(m.target, ~m.visible)
    hidden = m.target.sum(dim=1)
    # two runs of ceil(r K / 2) tokens: at most 0.6 K (+1 for rounding), at least one run's worth
    assert int(hidden.max()) <= 61 and int(hidden.min()) >= 10
    for row in m.target:
        starts = torch.nonzero(row[1:] & ~row[:-1]).numel() + int(row[0])
        assert 1 <= starts <= 2  # each span is one contiguous run; overlapping runs merge
    # the share varies per sample, unlike the fixed-ratio `random`
    assert hidden.float().std() > 3


def test_any_order_rejects_bad_arguments_and_tiny_sequences_work():
    with pytest.raises(ValueError, match="min_ratio"):
        build_sampler("any_order", min_ratio=0.8, max_ratio=0.5)
    with pytest.raises(ValueError, match="n_spans"):
        build_sampler("any_order", n_spans=0)
    m = build_sampler("any_order", min_ratio=0.5, max_ratio=0.99, n_spans=4)(32, 2, _gen(0))
    assert bool(m.visible.any(dim=1).all()) and bool(m.target.any(dim=1).all())
