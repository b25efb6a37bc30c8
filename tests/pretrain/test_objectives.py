"""The shared reconstruction loss: targets only, no leak, next-token head routing."""

from __future__ import annotations

import pytest
import torch

from tokenunify.models.tokenunify_net import build_tokenunify
from tokenunify.pretrain.objectives import objective_loss
from tokenunify.tokens.masks import MaskSampler, TokenMasks, build_sampler


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tokenunify("tiny", mixer="vit", out_channels=1, anisotropic=False, pretraining=True).eval()


@pytest.mark.parametrize("name", ["random", "next", "next_all"])
def test_loss_is_finite_and_backpropagates(model, name):
    x = torch.rand(2, 1, 16, 32, 32)
    out = objective_loss(model, x, build_sampler(name), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    if name == "next":  # dense next-token prediction: every token from the prefix on is scored
        assert out.prediction_tokens.shape == (2, 32, model.token_features)
        assert out.n_target_tokens == int((32 - out.masks.prefix).sum()) >= 2 * 8


def test_the_loss_scores_the_clean_target_not_the_input(model):
    x = torch.rand(2, 1, 16, 32, 32)
    clean = torch.rand(2, 1, 16, 32, 32)
    for name in ("random", "next"):
        state = torch.Generator().manual_seed(4).get_state()
        on_input = objective_loss(model, x, build_sampler(name), torch.Generator().set_state(state), normalize=False)
        on_clean = objective_loss(model, x, build_sampler(name), torch.Generator().set_state(state), normalize=False,
                                  target=clean)
        torch.testing.assert_close(on_input.prediction_tokens, on_clean.prediction_tokens)  # same input, same output
        from tokenunify.tokens.patchify import patchify

        w = on_clean.masks.target.float()
        expected = (((on_clean.prediction_tokens - patchify(clean, model.patch)) ** 2).mean(-1) * w).sum() / w.sum()
        torch.testing.assert_close(on_clean.loss, expected)
        assert not torch.isclose(on_input.loss, on_clean.loss)
    with pytest.raises(ValueError, match="shape"):
        objective_loss(model, x, build_sampler("random"), torch.Generator(), target=clean[:1])


@pytest.mark.parametrize("name", ["random", "next_all"])
def test_target_content_never_reaches_the_model(model, name):
    """Changing what the target tokens hold changes the truth but not the prediction.

    (`next` feeds the tokens after the prefix to its causal stream on purpose;
    tests/pretrain/test_no_leak.py proves it never sees a token it predicts.)
    """
    x = torch.rand(2, 1, 16, 32, 32)
    generator_state = torch.Generator().manual_seed(3).get_state()
    first = objective_loss(model, x, build_sampler(name), torch.Generator().set_state(generator_state))
    target = first.masks.target
    from tokenunify.tokens.patchify import patchify, unpatchify

    tokens = patchify(x, model.patch)
    tokens[target] = torch.rand_like(tokens[target])
    changed = unpatchify(tokens, model.patch, (2, 4, 4), 1)
    second = objective_loss(model, changed, build_sampler(name), torch.Generator().set_state(generator_state))
    assert torch.equal(first.masks.target, second.masks.target)
    torch.testing.assert_close(first.prediction_tokens, second.prediction_tokens)
    assert not torch.isclose(first.loss, second.loss)


def test_loss_covers_target_tokens_only(model):
    """A prediction error on a token that is neither visible nor target must not count."""

    class OneTarget(MaskSampler):
        def sample(self, batch, n_tokens, generator):
            visible = torch.zeros(batch, n_tokens, dtype=torch.bool)
            visible[:, : n_tokens // 2] = True
            target = torch.zeros_like(visible)
            target[:, -1] = True
            return TokenMasks(visible, target)

    x = torch.rand(1, 1, 16, 32, 32)
    base = objective_loss(model, x, OneTarget(), torch.Generator().manual_seed(0), normalize=False)
    from tokenunify.tokens.patchify import patchify, unpatchify

    tokens = patchify(x, model.patch)
    tokens[0, -2] = 0.0  # neither visible nor target: hidden from the model and not scored
    moved = objective_loss(model, unpatchify(tokens, model.patch, (2, 4, 4), 1), OneTarget(), torch.Generator().manual_seed(0), normalize=False)
    torch.testing.assert_close(base.loss, moved.loss)
    assert base.n_target_tokens == 1
