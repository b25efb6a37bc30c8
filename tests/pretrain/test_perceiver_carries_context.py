"""The next-token prediction depends on the Perceiver latents, also after training.

The earlier head also read the deep features at the target's own position;
after about 400 steps its predictions had stopped depending on the latents
(swapping them between samples changed them by 3e-5 relative). The causal
head reads the prefix only through the latents, so swapping them must move
the predictions of a trained toy model.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenunify.models.tokenunify_net import TokenUnifyNet
from tokenunify.pretrain.objectives import objective_loss
from tokenunify.tokens.masks import build_sampler
from tokenunify.tokens.patchify import patchify, unpatchify

SMALL = {"stem_width": 4, "dims": (8, 16, 16, 24), "depths": (1, 1, 1, 1), "n_latents": 4}
PATCH, GRID = (2, 8, 8), (4, 4, 4)  # 8x32x32 crops, K = 64 tokens


def _crops(n: int, seed: int) -> torch.Tensor:
    """Flat tokens around a brightness drawn per crop: the prefix tells what the rest will be."""
    g = torch.Generator().manual_seed(seed)
    level = 0.2 + 0.6 * torch.rand(n, 1, 1, generator=g)
    tokens = (level + 0.1 * torch.randn(n, 64, 1, generator=g)).expand(n, 64, 128)
    return unpatchify(tokens.contiguous(), PATCH, GRID, 1).clamp(0, 1)


def test_swapping_latents_between_samples_changes_the_trained_prediction():
    torch.manual_seed(0)
    model = TokenUnifyNet(mixer="mamba", anisotropic=True, out_channels=1, pretraining=True, patch=PATCH, **SMALL)
    sampler = build_sampler("next")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(80):
        out = objective_loss(model, _crops(8, step), sampler, gen, normalize=False)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), "the toy model did not train"

    model.eval()
    x = _crops(2, 999)
    prefix = torch.tensor([32, 32])
    hidden = model.hide(x, torch.arange(64)[None] < prefix[:, None])
    with torch.no_grad():
        deep = model.encode(hidden)[-1]
        latents, _ = model.next_context_of(deep)
        scaled = (patchify(x, model.patch) - 0.5) / 0.25
        positions = model.token_positions(x.shape)
        own = model.next_head(scaled, prefix, latents, positions)
        swapped = model.next_head(scaled, prefix, latents[[1, 0]], positions)
        assert torch.equal(own, model.predict_next(hidden, patchify(x, model.patch), prefix))
    rows = slice(32, 64)
    change = float((swapped[:, rows] - own[:, rows]).norm() / own[:, rows].norm())
    # The old head, which also read the features at the target, moved by 3e-5 relative.
    assert change > 1e-3, f"swapping the latents changed the predictions by only {change:.2e} relative"
