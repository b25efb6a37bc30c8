"""No objective sees what it predicts: a changed answer leaves the prediction bit-identical.

For every objective, both patch layouts, both mixers and K = 64 tokens, over
random masks: the dense objectives' output must not move by a single bit when
every voxel of every hidden token is rewritten; the next-token prediction of
token t must not move when every voxel of tokens t..K-1 is rewritten. A
control checks that the next prediction does move when token t-1's content
changes, so the comparison can fail.
"""

from __future__ import annotations

import pytest
import torch

from tokenunify.models.tokenunify_net import TokenUnifyNet
from tokenunify.pretrain.objectives import MaskedForward
from tokenunify.tokens.masks import available_samplers, build_sampler
from tokenunify.tokens.patchify import patchify, token_grid, unpatchify

SMALL = {"stem_width": 4, "dims": (8, 16, 16, 24), "depths": (1, 1, 1, 1), "n_latents": 4}
#: (anisotropic, crop): 4x16x16 patches on 16x64x64, 8x8x8 patches on 32x32x32; K = 64 both.
LAYOUTS = {"anisotropic": (True, (16, 64, 64)), "isotropic": (False, (32, 32, 32))}
CASES = 3


def _model(mixer: str, anisotropic: bool) -> TokenUnifyNet:
    torch.manual_seed(0)
    model = TokenUnifyNet(mixer=mixer, anisotropic=anisotropic, out_channels=1, pretraining=True, **SMALL)
    return model.eval()


def _rewrite(x: torch.Tensor, patch, which: torch.Tensor, seed: int) -> torch.Tensor:
    """`x` with every voxel of the tokens where `which` (B, K) is True replaced by fresh noise."""
    tokens = patchify(x, patch)
    noise = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(seed))
    changed = torch.where(which[..., None], noise, tokens)
    return unpatchify(changed, patch, token_grid(x.shape, patch), x.shape[1])


def test_every_registered_objective_is_covered():
    assert set(available_samplers()) == {"random", "next", "next_all", "any_order"}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mixer", ["mamba", "vit"])
@pytest.mark.parametrize("objective", ["random", "next", "next_all", "any_order"])
def test_prediction_is_bit_identical_when_its_answer_changes(objective, mixer, layout):
    anisotropic, crop = LAYOUTS[layout]
    model = _model(mixer, anisotropic)
    forward = MaskedForward(model)
    sampler = build_sampler(objective)
    k = 1
    for size, p in zip(crop, model.patch):
        k *= size // p
    assert k >= 64
    for case in range(CASES):
        gen = torch.Generator().manual_seed(100 * case + 7)
        x = torch.rand(2, 1, *crop, generator=gen)
        masks = sampler(2, k, gen)
        with torch.no_grad():
            if sampler.head == "dense":
                before = forward(x, masks.visible)
                after = forward(_rewrite(x, model.patch, ~masks.visible, case), masks.visible)
                assert torch.equal(before, after), f"case {case}: a hidden token reached the reconstruction"
                continue
            prefix = masks.prefix
            # a target t >= n per sample; rewrite tokens t..K-1
            t = prefix + (torch.rand(2, generator=gen) * (k - prefix).float()).long()
            later = torch.arange(k)[None] >= t[:, None]
            before = forward(x, masks.visible, prefix)
            after = forward(_rewrite(x, model.patch, later, case), masks.visible, prefix)
            for b in range(2):
                n, tb = int(prefix[b]), int(t[b])
                assert torch.equal(before[b, n:tb + 1], after[b, n:tb + 1]), (
                    f"case {case}, sample {b}: tokens >= {tb} changed the predictions of tokens {n}..{tb}"
                )
            # control: rewriting token t-1 (>= n) must change the prediction of token t
            b = int(torch.argmax((t > prefix).int()))
            if t[b] > prefix[b]:
                previous = torch.zeros_like(later)
                previous[b, t[b] - 1] = True
                moved = forward(_rewrite(x, model.patch, previous, case + 50), masks.visible, prefix)
                assert not torch.equal(moved[b, t[b]], before[b, t[b]]), "the head ignores the token before its target"
