import dataclasses

import pytest
import torch

from core.config import build_config
from core.masking import make_mask, num_masked
from core.model import ARCHS, MAE, patchify, unpatchify
from core.targets import TARGETS, build_target


def tiny_model(**model_overrides):
    """The tiny preset's model at 32 px (8 x 8 patches), the geometry these tests spell out."""
    model_overrides = {"img_size": 32, **model_overrides}
    cfg = build_config("tiny", [f"model.{k}={v}" for k, v in model_overrides.items()])
    target = build_target(cfg.model, cfg.data)
    return cfg, MAE(cfg.model, target.dim), target


def mask_for(cfg, batch, seed=0):
    grid = cfg.model.img_size // ARCHS[cfg.model.arch]["patch_size"]
    return make_mask(cfg.model.mask_strategy, batch, grid, cfg.model.mask_ratio, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_registered_arch_builds_and_predicts(arch):
    """timm-style walk of the registry; the big ones on the meta device (shapes, no memory)."""
    p = ARCHS[arch]["patch_size"]
    cfg = build_config("tiny", [f"model.arch={arch}", f"model.img_size={4 * p}"])
    small = ARCHS[arch]["embed_dim"] <= 128
    with torch.device("cpu" if small else "meta"):
        model = MAE(cfg.model, p * p * 3)
        imgs = torch.randn(2, 3, 4 * p, 4 * p)
    mask = mask_for(cfg, 2).to(imgs.device)
    assert model(imgs, mask).shape == (2, 16, p * p * 3)


def test_output_shapes_and_visible_tokens_only():
    cfg, model, _ = tiny_model()
    imgs, mask = torch.randn(3, 3, 32, 32), mask_for(cfg, 3)
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.decoder_blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    pred = model(imgs, mask)
    visible = 64 - num_masked(64, 0.75)
    assert pred.shape == (3, 64, 4 * 4 * 3)
    assert seen == [(3, 1 + visible, 128), (3, 1 + 64, 64)]  # encoder: cls + 16 visible; decoder: all


def test_mask_token_in_encoder_sees_every_patch():
    cfg, model, _ = tiny_model(mask_token_in_encoder=True)
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    pred = model(torch.randn(2, 3, 32, 32), mask_for(cfg, 2))
    assert seen == [(2, 65, 128)] and pred.shape == (2, 64, 48)
    assert "encoder_mask_token" in dict(model.named_parameters())


def test_masked_pixels_never_reach_the_model():
    """Changing the pixels of a masked patch leaves every prediction unchanged; changing a
    visible one does not (so gather and scatter put tokens where they belong)."""
    cfg, model, _ = tiny_model()
    mask = mask_for(cfg, 1)
    imgs = torch.randn(1, 3, 32, 32)
    masked, visible = int(mask[0].nonzero()[0]), int((~mask[0]).nonzero()[0])

    def poke(patch):
        x = imgs.clone()
        r, c = divmod(patch, 8)
        x[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 5
        return model(x, mask)
    base = model(imgs, mask)
    assert torch.equal(poke(masked), base)
    assert not torch.allclose(poke(visible), base)


def test_gather_then_scatter_restores_visible_tokens():
    from core.model import gather_visible, visible_index
    mask = make_mask("random", 4, 8, 0.75, torch.Generator().manual_seed(1))
    x = torch.randn(4, 64, 5)
    vis = gather_visible(x, mask, 16)
    idx = visible_index(mask, 16)
    assert torch.equal(idx, torch.sort(idx, dim=1).values)  # patch order is kept
    back = torch.zeros_like(x).scatter(1, idx.unsqueeze(-1).expand(-1, -1, 5), vis)
    assert torch.equal(back[~mask], x[~mask]) and (back[mask] == 0).all()


def test_patchify_round_trip():
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(x, 4), 4), x)
    # patch 1 of row 0 holds pixels [0:4, 4:8]
    assert torch.equal(patchify(x, 4)[0, 1].view(4, 4, 3), x[0, :, 0:4, 4:8].permute(1, 2, 0))


def test_norm_pixel_formula():
    cfg, _, target = tiny_model(target="norm_pixel")
    imgs = torch.randn(2, 3, 32, 32) * 3 + 1
    t = target(imgs)
    p = patchify(imgs, 4)
    expected = (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert torch.allclose(t, expected, atol=1e-5)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 64), atol=1e-5)


# dvae_token needs a trained tokenizer: its masked-only loss is tested in test_targets.py
@pytest.mark.parametrize("name", sorted(set(TARGETS) - {"dvae_token"}))
def test_loss_counts_masked_patches_only(name, tmp_path):
    cfg, model, target = tiny_model(target=name)
    from core.data import build_dataset
    target.prepare(build_dataset(cfg.data, "train", cfg.model.img_size), str(tmp_path), torch.device("cpu"))
    imgs, mask = torch.randn(2, 3, 32, 32), mask_for(cfg, 2)
    pred = model(imgs, mask)
    t = target(imgs)
    base = target.loss(pred, t, mask)
    pred2 = pred.detach().clone()
    pred2[~mask] += 100.0  # wreck the visible patches: the loss must not move
    assert torch.allclose(target.loss(pred2, t, mask), base.detach())
    pred3 = pred.detach().clone()
    pred3[mask] += torch.sign(pred3[mask] - t[mask])  # away from the target (+1 alone may come closer)
    assert target.loss(pred3, t, mask) > base
    assert target.loss(pred2, t, mask, all_patches=True) > base  # the option includes visible ones


def official_keys(depth, decoder_depth):
    """Parameter names of the officially released MAE pretraining checkpoints."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    keys += [f"blocks.{i}.{k}" for i in range(depth) for k in block]
    keys += ["norm.weight", "norm.bias", "mask_token", "decoder_pos_embed", "decoder_embed.weight",
             "decoder_embed.bias"]
    keys += [f"decoder_blocks.{i}.{k}" for i in range(decoder_depth) for k in block]
    keys += ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]
    return set(keys)


def test_checkpoint_key_layout_is_the_official_one():
    cfg = build_config("paper", ["model.arch=vit_base_patch16"])
    with torch.device("meta"):
        model = MAE(cfg.model, 16 * 16 * 3)
    state = model.state_dict()
    assert set(state) == official_keys(12, 8)
    assert state["pos_embed"].shape == (1, 197, 768)
    assert state["decoder_pos_embed"].shape == (1, 197, 512)
    assert state["decoder_pred.weight"].shape == (768, 512)
    assert state["mask_token"].shape == (1, 1, 512)
    # an official-layout state dict loads strictly
    fake = {k: torch.zeros(v.shape) for k, v in state.items()}
    with torch.device("cpu"):
        real = MAE(dataclasses.replace(cfg.model, arch="vit_tiny_patch4", img_size=32, decoder_embed_dim=64,
                                       decoder_num_heads=4, decoder_depth=2), 48)
    real.load_state_dict({k: torch.zeros(v.shape) for k, v in real.state_dict().items()}, strict=True)
    assert len(fake) == len(state)


def test_position_embeddings_are_fixed_sincos():
    _, model, _ = tiny_model()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(128))  # cls slot
    assert model.pos_embed.abs().max() <= 1.0
