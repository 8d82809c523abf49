"""Encoder sizes, registered as timm registers its models: plain data, so core.config checks
model.arch without torch. A plugin adds one with `ARCHS.register(name, dict(patch_size=..., embed_dim=...,
depth=..., num_heads=...))` (docs/extending.md).

core.model builds them; every entry is exercised by tests/test_model.py.
"""
from __future__ import annotations

from core.registry import ARCHS

ARCHS.register("vit_tiny_patch4", dict(patch_size=4, embed_dim=128, depth=4, num_heads=4),
               help="tiny preset, 16 px")
ARCHS.register("vit_tiny_patch8", dict(patch_size=8, embed_dim=128, depth=4, num_heads=4),
               help="scenes preset, 32 px: 16 tokens")
ARCHS.register("vit_small_patch16", dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), help="ViT-S/16")
ARCHS.register("vit_base_patch16", dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), help="ViT-B/16")
ARCHS.register("vit_large_patch16", dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
               help="ViT-L/16 (the paper's)")
ARCHS.register("vit_huge_patch14", dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16), help="ViT-H/14")
# the rehearsal preset: ViT-L's 24 blocks and 16 px patches (every Figure 9 variant builds), 32 wide
ARCHS.register("vit_rehearsal_patch16", dict(patch_size=16, embed_dim=32, depth=24, num_heads=4),
               help="the rehearsal preset: ViT-L's 24 blocks and 16 px patches, 32 wide")
# the cifar_vitt tier (docs/tiers.md): ViT-Ti's sizes (DeiT-Ti: 192 wide, 12 blocks, 3 heads), 4 px patches
ARCHS.register("vit_ti_patch4", dict(patch_size=4, embed_dim=192, depth=12, num_heads=3), help="ViT-Ti, 4 px patches")
# the rehearsals of the 12-block tiers (core/presets.py REHEARSAL_OF): their depth and patch size, 32 wide
ARCHS.register("vit_rehearsal12_patch16", dict(patch_size=16, embed_dim=32, depth=12, num_heads=4),
               help="rehearsal of the 12-block, 16 px patch tiers")
ARCHS.register("vit_rehearsal12_patch4", dict(patch_size=4, embed_dim=32, depth=12, num_heads=4),
               help="rehearsal of the 12-block, 4 px patch tier")

__all__ = ["ARCHS"]
