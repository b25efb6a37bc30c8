"""TokenUnify network: hierarchical Mamba/ViT encoder, UNETR decoder, Perceiver next-token head.

One class serves both phases of the method:

- **pretraining** (``pretraining=True``, ``out_channels`` = ``in_channels``):
  :meth:`TokenUnifyNet.forward_tokens` reconstructs a crop whose hidden tokens
  were blanked (random / next-all token prediction score the reconstruction
  on the target tokens), and :meth:`TokenUnifyNet.predict_next` predicts the
  content of token ``n`` from a Perceiver summary of the visible context
  (next-token prediction). :meth:`TokenUnifyNet.hide` blanks tokens with the
  model's learned mask token.
- **fine-tuning** (``pretraining=False``): ``forward(x)`` returns dense
  logits, one channel per affinity offset, with the U-Net's contract
  (``downsample_factor``, ``check_input_shape``), so training and blockwise
  prediction use it unchanged.

Encoder and decoder parameters have the same names and shapes in both
configurations; only ``decoder.head`` (its channel count) and the
pretraining-only ``perceiver``, ``next_head``, ``next_features`` and ``mask_token`` differ, so
:func:`tokenunify.finetune.init.load_pretrained` (with ``head_prefixes`` naming
``decoder.head.``, which then stays freshly initialised) moves a pretrained
backbone into a segmentation model by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tokenunify.models.decoder import UNETRDecoder
from tokenunify.models.encoder import HierarchicalEncoder
from tokenunify.models.mixers import grid_coordinates, sincos_position_encoding
from tokenunify.models.next_head import CausalNextHead
from tokenunify.models.perceiver import PerceiverResampler
from tokenunify.tokens.masks import hide_tokens
from tokenunify.tokens.patchify import (
    ANISOTROPIC_PATCH,
    ISOTROPIC_PATCH,
    patchify,
    token_grid,
    unpatchify,
)

__all__ = [
    "PRESETS",
    "TokenUnifyNet",
    "build_tokenunify",
    "count_parameters",
    "list_presets",
]

Triple = tuple[int, int, int]

#: Raw EM arrives in [0, 1] with a mean near 0.5. The network sees it centred
#: and scaled to roughly unit spread: uncentred, a token's brightness is a
#: small shift on a large common offset, and the per-voxel channel norms strip
#: it. Measured on the FIB cubes (tiny preset, 75% random masking): with
#: inputs in [0, 1] the hidden-token MSE stayed at that of predicting 0.5
#: (0.022) for 250 steps; centred, it fell to 0.013 (predicting each crop's
#: visible mean gives 0.0165). Fixed constants, not data statistics, so a
#: checkpoint means the same on every volume.
INPUT_CENTER = 0.5
INPUT_SCALE = 0.25


class TokenUnifyNet(nn.Module):
    """Encoder + UNETR decoder (+ Perceiver next-token head when pretraining).

    Args:
        in_channels: input channels (1 for grey-scale EM).
        out_channels: dense output channels (``in_channels`` for
            reconstruction, the number of affinity offsets for segmentation).
        stem_width, dims, depths, mixer, anisotropic, strides, mixer_kwargs:
            see :class:`~tokenunify.models.encoder.HierarchicalEncoder`.
        patch: token patch (pz, py, px) of the pretraining tasks; default
            4x16x16 (anisotropic) or 8x8x8 (isotropic).
        pretraining: add the mask token, Perceiver Resampler and next-token head.
        n_latents: Perceiver latents.
        perceiver_depth: Perceiver layers.
        head_depth: layers of the causal next-token head.
        next_context: what the next-token head reads of the prefix:
            ``"perceiver"`` (the latents) or ``"features"`` (the deepest
            features themselves, the ablation without the Perceiver).
        full_res: ``"block"`` or ``"lean"`` full-resolution level (see
            :data:`~tokenunify.models.encoder.FULL_RES`).
        channels_last: keep the convolution weights, and so the feature
            maps, channels-last (``torch.channels_last_3d``); a speed choice only.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        stem_width: int = 16,
        dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 1, 1, 1),
        mixer: str = "mamba",
        anisotropic: bool = True,
        strides: Sequence[Sequence[int]] | None = None,
        mixer_kwargs: Mapping[str, Any] | None = None,
        patch: Sequence[int] | None = None,
        pretraining: bool = False,
        n_latents: int = 32,
        perceiver_depth: int = 2,
        head_depth: int = 2,
        next_context: str = "perceiver",
        full_res: str = "block",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        self.encoder = HierarchicalEncoder(
            in_channels, stem_width, dims, depths, mixer, anisotropic, strides, mixer_kwargs, full_res
        )
        enc = self.encoder
        self.decoder = UNETRDecoder(stem_width, enc.dims, enc.strides, enc.kernels, out_channels, full_res)
        self.in_channels, self.out_channels, self.mixer = in_channels, out_channels, mixer
        self.anisotropic, self.pretraining = anisotropic, pretraining
        if patch is None:
            patch = ANISOTROPIC_PATCH if anisotropic else ISOTROPIC_PATCH
        self.patch: Triple = tuple(int(p) for p in patch)  # type: ignore[assignment]
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive ints, got {patch}")
        self.token_features = in_channels * self.patch[0] * self.patch[1] * self.patch[2]
        self.mask_token: nn.Parameter | None = None
        self.perceiver: PerceiverResampler | None = None
        self.next_head: CausalNextHead | None = None
        self.next_features: nn.Module | None = None
        if next_context not in ("perceiver", "features"):
            raise ValueError(f"next_context must be 'perceiver' or 'features', got {next_context!r}")
        if pretraining:
            # A learned token lets the network tell "hidden" from "dark". It
            # starts as noise in the intensity range, not zeros: a flat masked
            # region makes every channel of the first conv equal, and the
            # per-voxel norms then blow its gradient up (to 1e13 here).
            self.mask_token = nn.Parameter(torch.rand(self.token_features))
            deep = enc.dims[-1]
            if next_context == "perceiver":
                self.perceiver = PerceiverResampler(deep, n_latents, perceiver_depth)
            else:
                self.next_features = nn.Linear(deep, deep)
            self.next_head = CausalNextHead(deep, self.token_features, head_depth, mixer)
        if channels_last:
            # channels-last convolution weights make every convolution's output
            # channels-last, the layout oneDNN's 3D kernels and the token mixers
            # read fastest (docs/study.md, "The fine-tuning step"); values and
            # checkpoints are the same in either layout
            self.to(memory_format=torch.channels_last_3d)
            for m in self.modules():
                # except on fewer than 4 input channels: oneDNN's channels-last bf16
                # kernel for the 1-channel stem took 4x the time of the plain one
                if isinstance(m, nn.Conv3d) and m.in_channels < 4:
                    m.weight.data = m.weight.data.contiguous()

    # -- shape contract (same as UNet3D) ---------------------------------------------

    @property
    def downsample_factor(self) -> Triple:
        """Total downsampling per axis ``(z, y, x)``; input sizes must be multiples of it."""
        return self.encoder.downsample_factor

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless ``shape`` = ``(B, C, z, y, x)`` is accepted by the model."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 5:
            raise ValueError(f"TokenUnifyNet expects a 5D input (B, C, z, y, x), got shape {shape}")
        if shape[1] != self.in_channels:
            raise ValueError(f"TokenUnifyNet expects {self.in_channels} input channel(s), got {shape[1]}")
        df = self.downsample_factor
        if any(s <= 0 or s % f for s, f in zip(shape[2:], df)):
            raise ValueError(
                f"TokenUnifyNet input spatial shape {shape[2:]} must be positive multiples of the "
                f"downsample factor {df} (z, y, x)"
            )

    # -- dense path ----------------------------------------------------------------------

    def encode(self, x: Tensor) -> list[Tensor]:
        """Checked input in [0, 1] -> encoder features ``[stem, stage_0, ..., stage_3]``."""
        self.check_input_shape(x.shape)
        return self.encoder((x - INPUT_CENTER) / INPUT_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, D, H, W)`` -> logits ``(B, out_channels, D, H, W)``."""
        return self.decoder(self.encode(x)).contiguous()

    def forward_tokens(self, x_hidden: Tensor) -> Tensor:
        """Dense reconstruction of a crop whose hidden tokens are blanked (see :meth:`hide`).

        The same computation as :meth:`forward`; the name marks the
        pretraining use. Score it with ``patchify`` on the target tokens.
        """
        return self.forward(x_hidden)

    # -- pretraining -----------------------------------------------------------------------

    def hide(self, x: Tensor, visible: Tensor) -> Tensor:
        """Blank every non-visible token of ``x`` (B, C, D, H, W) with the mask token.

        Args:
            x: crop, spatial shape divisible by :attr:`patch`.
            visible: bool ``(B, K)`` in token order (z slowest, x fastest).

        Uses zeros when the model has no mask token (``pretraining=False``).
        The gradient reaches the mask token, never the hidden content.
        """
        grid = token_grid(x.shape, self.patch)
        tokens = hide_tokens(patchify(x, self.patch), visible, self.mask_token)
        return unpatchify(tokens, self.patch, grid, x.shape[1])

    def token_positions(self, shape: Sequence[int]) -> Tensor:
        """Centres ``(K, 3)`` of all tokens of a crop of ``shape``, in deepest-grid units (z, y, x)."""
        grid = token_grid(shape, self.patch)
        idx = grid_coordinates(grid)
        patch = torch.tensor(self.patch, dtype=torch.float32)
        factor = torch.tensor(self.downsample_factor, dtype=torch.float32)
        return (idx + 0.5) * patch / factor - 0.5

    def next_context_of(self, deep: Tensor) -> tuple[Tensor, Tensor | None]:
        """What the next-token head reads of the prefix: ``(context (B, M, dim), key positions or None)``."""
        if self.perceiver is not None:
            return self.perceiver(deep), None
        if self.next_features is None:
            raise RuntimeError("this TokenUnifyNet was built without pretraining=True: no next-token head")
        grid = deep.shape[2:]
        ctx = self.next_features(deep.flatten(2).transpose(1, 2))
        pos = sincos_position_encoding(grid_coordinates(grid, deep.device), deep.shape[1])[None]
        return ctx, pos

    def predict_next(self, x_hidden: Tensor, tokens: Tensor, prefix: Tensor) -> Tensor:
        """Predict every token from the prefix on: ``(B, K, token_features)``, row ``t`` for token ``t``.

        Args:
            x_hidden: the crop with every token from ``prefix`` on blanked (:meth:`hide`).
            tokens: ``(B, K, token_features)`` the crop's input tokens (``patchify``
                of the unblanked input): the teacher-forced stream; row ``t`` reads
                only tokens ``prefix .. t-1`` of it.
            prefix: long ``(B,)`` prefix lengths, ``1 <= n < K``.

        Rows before the prefix carry no prediction (nothing scores them). A
        pure function of its arguments: no state is kept between calls.
        """
        if self.next_head is None:
            raise RuntimeError("this TokenUnifyNet was built without pretraining=True: no next-token head")
        b = x_hidden.shape[0]
        k = math.prod(token_grid(x_hidden.shape, self.patch))
        prefix = torch.as_tensor(prefix, dtype=torch.long, device=x_hidden.device).reshape(-1)
        if prefix.numel() == 1:
            prefix = prefix.expand(b)
        if prefix.shape != (b,) or bool((prefix < 1).any()) or bool((prefix >= k).any()):
            raise ValueError(f"prefix must be one length per sample in [1, {k}), got {prefix.tolist()}")
        deep = self.encode(x_hidden)[-1]
        context, context_pos = self.next_context_of(deep)
        scaled = (tokens.to(deep.dtype) - INPUT_CENTER) / INPUT_SCALE
        return self.next_head(scaled, prefix, context, self.token_positions(x_hidden.shape).to(deep.device), context_pos)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: Size presets: widths and depths of the encoder (the decoder follows the
#: widths). Parameter counts are those of the fine-tuning model (3 affinity
#: outputs) and nearly equal for both mixers; ``micro`` and ``tiny`` train
#: on a 2-core CPU (``micro`` is the study's second scaling point),
#: ``base`` matches the paper's 28M EMmamba, the rest its scaling study.
#: ``tiny`` has no mixer in stage 0: on an anisotropic 32x128x128 crop that
#: stage is a 131k-voxel sequence, and its Mamba scan alone cost more than
#: the rest of the network on 2 CPU cores, for context the later stages give.
PRESETS: dict[str, dict[str, Any]] = {
    "micro": {"stem_width": 8, "dims": (16, 32, 48, 64), "depths": (0, 1, 1, 2), "n_latents": 8},
    "tiny": {"stem_width": 16, "dims": (24, 48, 72, 112), "depths": (0, 1, 2, 3), "n_latents": 16},
    "small": {"stem_width": 16, "dims": (32, 64, 128, 192), "depths": (1, 1, 2, 4), "n_latents": 32},
    "base": {"stem_width": 24, "dims": (48, 96, 192, 384), "depths": (2, 2, 4, 6), "n_latents": 32},
    "100M": {"stem_width": 32, "dims": (64, 128, 320, 640), "depths": (2, 2, 6, 10), "n_latents": 64},
    "200M": {"stem_width": 32, "dims": (96, 192, 448, 896), "depths": (2, 2, 8, 10), "n_latents": 64},
    "500M": {"stem_width": 48, "dims": (128, 256, 640, 1408), "depths": (2, 2, 8, 11), "n_latents": 64},
    "1B": {"stem_width": 64, "dims": (160, 320, 896, 1920), "depths": (2, 2, 8, 13), "n_latents": 64},
}

#: Target parameter counts of the presets (fine-tuning configuration).
PRESET_TARGETS: dict[str, int] = {
    "micro": 850_000,
    "tiny": 2_400_000,
    "small": 7_500_000,
    "base": 28_000_000,
    "100M": 100_000_000,
    "200M": 200_000_000,
    "500M": 500_000_000,
    "1B": 1_000_000_000,
}


def build_tokenunify(
    preset: str = "tiny",
    mixer: str = "mamba",
    in_channels: int = 1,
    out_channels: int = 3,
    anisotropic: bool = True,
    **overrides: Any,
) -> TokenUnifyNet:
    """Build a :class:`TokenUnifyNet` from a size preset.

    Args:
        preset: a key of :data:`PRESETS`.
        mixer: ``"mamba"`` or ``"vit"``.
        in_channels, out_channels, anisotropic: see :class:`TokenUnifyNet`.
        **overrides: any other :class:`TokenUnifyNet` argument (e.g.
            ``pretraining=True``, ``depths=...``), replacing the preset's value.

    This is the ``"tokenunify"`` builder of :mod:`tokenunify.models.registry`,
    so a checkpoint's ``{"name": "tokenunify", "preset": ..., ...}`` rebuilds it.

    Raises:
        ValueError: for an unknown preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    kwargs: dict[str, Any] = {**PRESETS[preset], **overrides}
    return TokenUnifyNet(
        in_channels=in_channels, out_channels=out_channels, mixer=mixer, anisotropic=anisotropic, **kwargs
    )


def list_presets(mixers: Sequence[str] = ("mamba", "vit"), **kwargs: Any) -> list[dict[str, Any]]:
    """``[{"name", "mixer", "parameters"}, ...]`` for every preset and mixer.

    Models are built on the meta device, so even the 1B preset costs no
    memory. ``kwargs`` go to :func:`build_tokenunify` (e.g. ``pretraining=True``).
    """
    rows = []
    for name in PRESETS:
        for mixer in mixers:
            with torch.device("meta"):
                model = build_tokenunify(name, mixer=mixer, **kwargs)
            rows.append({"name": name, "mixer": mixer, "parameters": count_parameters(model)})
    return rows
