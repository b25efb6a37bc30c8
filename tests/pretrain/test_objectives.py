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
    if name == "next":
        assert out.prediction_tokens.shape[1] == 1 and out.n_target_tokens == 2


@pytest.mark.parametrize("name", ["random", "next", "next_all"])
def test_target_content_never_reaches_the_model(model, name):
    """Changing what the target tokens hold changes the truth but not the prediction."""
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
