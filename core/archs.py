"""Encoder sizes, timm-style registry: plain data, so core.config checks model.arch without torch.

core.model builds them; every entry is exercised by tests/test_model.py.
"""
from __future__ import annotations

ARCHS: dict[str, dict] = {
    "vit_tiny_patch4": dict(patch_size=4, embed_dim=128, depth=4, num_heads=4),  # tiny preset, 16 px
    "vit_tiny_patch8": dict(patch_size=8, embed_dim=128, depth=4, num_heads=4),  # the same at 32 px: 16 tokens
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # the rehearsal preset: ViT-L's 24 blocks and 16 px patches (every Figure 9 variant builds), 32 wide
    "vit_rehearsal_patch16": dict(patch_size=16, embed_dim=32, depth=24, num_heads=4),
}
