"""Weight decay only on matrices and kernels, by name; old one-group optimizer states still load."""

from __future__ import annotations

import torch

from tokenunify.models.registry import build_model
from tokenunify.training.optim import build_optimizer, load_optimizer_state, parameter_groups


def pretraining_net(mixer: str) -> torch.nn.Module:
    return build_model({"name": "tokenunify", "preset": "tiny", "mixer": mixer, "in_channels": 1, "out_channels": 1,
                        "anisotropic": False, "pretraining": True})


def test_groups_by_name():
    net = pretraining_net("mamba")
    decay, keep = parameter_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0.0
    kept, decayed = set(keep["names"]), set(decay["names"])
    assert kept | decayed == {n for n, _ in net.named_parameters()} and not kept & decayed
    for name in kept | decayed:
        leaf = name.rsplit(".", 1)[-1]
        special = (leaf in {"bias", "A_log", "D", "mask_token", "latents", "start"}
                   or ".norm" in name or "_norm" in name or name.split(".")[-2].startswith("norm"))
        assert (name in kept) == special, name
    # the named cases exist in this network, so the checks above are not vacuous
    for wanted in ("mask_token", "perceiver.latents", "next_head.start", "A_log", ".D", "norm1.weight", "conv1.bias"):
        assert any(wanted in n for n in kept), wanted
    assert any(n.endswith("conv1.weight") for n in decayed) and any("in_proj.weight" in n for n in decayed)


def test_vit_and_unet_norms_and_biases_are_not_decayed():
    for net in (pretraining_net("vit"), build_model({"name": "unet", "in_channels": 1, "out_channels": 3,
                                                      "anisotropic": True, "width": (4, 8)})):
        decay, keep = parameter_groups(net, 1e-4)
        params = dict(net.named_parameters())
        assert all(params[n].ndim > 1 for n in decay["names"])
        assert all(params[n].ndim <= 1 or n.endswith(("latents", "mask_token", "start")) for n in keep["names"])


def test_decay_applies_to_kernels_only():
    net = build_model({"name": "unet", "in_channels": 1, "out_channels": 3, "anisotropic": True, "width": (4, 8)})
    opt = build_optimizer(net, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # only the decay moves the weights
    opt.step()
    for name, p in net.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (p.ndim > 1 and bool(before[name].abs().sum() > 0)), name


def test_one_group_state_of_earlier_versions_loads():
    net = build_model({"name": "unet", "in_channels": 1, "out_channels": 3, "anisotropic": True, "width": (4, 8)})
    old = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    new = build_optimizer(net, 1e-3, 1e-4)
    load_optimizer_state(new, net, old.state_dict())
    for p in net.parameters():
        torch.testing.assert_close(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
    assert [g["weight_decay"] for g in new.param_groups] == [1e-4, 0.0]
