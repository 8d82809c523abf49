"""The MAE model: a ViT encoder over visible patches and a light decoder that predicts the masked ones.

Parameter names follow the officially released MAE checkpoints (patch_embed.proj, cls_token,
pos_embed, blocks.N.*, norm, decoder_embed, mask_token, decoder_pos_embed, decoder_blocks.N.*,
decoder_norm, decoder_pred), so those checkpoints load with strict=True.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from core.archs import ARCHS
from core.mask_rules import num_masked

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos embedding with a leading all-zero row for the cls token: (1, 1 + grid^2, dim).

    Channel order of the released MAE checkpoints (timm's builder has the same values in another
    order): the first half encodes the patch's column, the second half its row, each half being
    [sin(p * w_k), cos(p * w_k)] for k < dim / 4 with w_k = 10000^(-k / (dim / 4)). Computed in
    float64, then cast, so a model built here equals one built by the official code."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid * grid, dtype=torch.float64)
    halves = []
    for coord in (pos % grid, pos // grid):  # patches in row-major order: column, then row
        angle = coord[:, None] * omega[None, :]
        halves += [angle.sin(), angle.cos()]
    emb = torch.cat(halves, dim=1).float()
    return torch.cat([torch.zeros(1, dim), emb], dim=0).unsqueeze(0)


class ViTEncoder(nn.Module):
    """The encoder alone (cls token, fixed position embeddings, blocks, norm): used by pretraining
    and by every evaluation, so both see the same parameter names."""

    def __init__(self, arch: str, img_size: int, drop_path: float = 0.0):
        super().__init__()
        a = ARCHS[arch]
        self.patch_size, self.embed_dim, self.depth = a["patch_size"], a["embed_dim"], a["depth"]
        self.patch_embed = PatchEmbed(img_size, a["patch_size"], 3, a["embed_dim"])
        self.grid = img_size // a["patch_size"]
        self.num_patches = self.grid ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a["embed_dim"]))
        self.pos_embed = nn.Parameter(sincos_pos_embed(self.grid, a["embed_dim"]), requires_grad=False)
        dpr = [drop_path * i / max(a["depth"] - 1, 1) for i in range(a["depth"])]  # grows with depth
        self.blocks = nn.ModuleList(
            Block(a["embed_dim"], a["num_heads"], 4.0, qkv_bias=True, norm_layer=LayerNorm, drop_path=dpr[i])
            for i in range(a["depth"]))
        self.norm = LayerNorm(a["embed_dim"])

    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embeddings, no cls token: (B, L, D)."""
        return self.patch_embed(imgs) + self.pos_embed[:, 1:]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the cls token and run the blocks and final norm: (B, 1 + N, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.run(self.tokens(imgs))


def _init_weights(m: nn.Module):
    # as in the paper's code: xavier-uniform linears, unit LayerNorms
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MAE(ViTEncoder):
    """Masked autoencoder. forward(imgs, mask) -> per-patch predictions (B, L, pred_dim).

    mask: bool (B, L), True = masked; every row masks the same number of patches.
    """

    def __init__(self, cfg, pred_dim: int):
        rng = torch.get_rng_state()  # _init draws from here: the encoder's weights are the seed's alone
        super().__init__(cfg.arch, cfg.img_size)
        d, dd = self.embed_dim, cfg.decoder_embed_dim
        self.mask_token_in_encoder = cfg.mask_token_in_encoder
        if self.mask_token_in_encoder:
            # Table 1c variant: the encoder sees a learned token (plus position) at masked positions
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, d))
            # checkpoints of this variant written before it lost the decoder's token still hold it
            self.register_load_state_dict_pre_hook(_drop_decoder_mask_token)
        else:
            # the decoder's mask token exists only where the decoder fills masked positions: DDP
            # expects a gradient for every parameter and stops on the next step if one got none
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_embed = nn.Linear(d, dd)
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(self.grid, dd), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(dd, cfg.decoder_num_heads, 4.0, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(cfg.decoder_depth))
        self.decoder_norm = LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, pred_dim)
        self.num_visible = self.num_patches - num_masked(self.num_patches, cfg.mask_ratio)
        torch.set_rng_state(rng)
        self._init()

    def _init(self):
        """The encoder first, from the RNG state the model was started with, then the rest: variants
        of one seed that differ in the decoder, target, masking or mask token start from the same
        encoder weights (paired seeds, core/report/intervals.py), and the random-weight baseline
        (core/eval/baselines.py) is exactly the encoder pretraining starts from."""
        w = self.patch_embed.proj.weight.data  # patch projection initialised like a linear layer
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in (self.blocks, self.norm):
            module.apply(_init_weights)
        for p in (getattr(self, "mask_token", None), getattr(self, "encoder_mask_token", None)):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(_init_weights)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoded tokens: (B, 1 + visible, D), or (B, 1 + L, D) with mask tokens in the encoder."""
        x = self.patch_embed(imgs)
        if self.mask_token_in_encoder:
            x = torch.where(mask.unsqueeze(-1), self.encoder_mask_token.to(x.dtype), x)
            return self.run(x + self.pos_embed[:, 1:])
        x = x + self.pos_embed[:, 1:]
        return self.run(gather_visible(x, mask, self.num_visible))

    def forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        cls, x = x[:, :1], x[:, 1:]
        if not self.mask_token_in_encoder:  # scatter visible tokens back among mask tokens
            full = self.mask_token.to(x.dtype).expand(mask.shape[0], mask.shape[1], -1)
            idx = visible_index(mask, x.shape[1]).unsqueeze(-1).expand(-1, -1, x.shape[-1])
            x = full.scatter(1, idx, x)
        x = torch.cat([cls, x], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_decoder(self.forward_encoder(imgs, mask), mask)


def initial_mae(cfg, pred_dim: int, seed: int) -> MAE:
    """The MAE pretraining run `seed` starts from (its encoder depends on the seed and the encoder's
    shape only)."""
    torch.manual_seed(seed)
    return MAE(cfg, pred_dim)


def _drop_decoder_mask_token(module, state_dict, prefix, *args):
    state_dict.pop(prefix + "mask_token", None)  # never used by this variant: its initial value


def visible_index(mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Indices of the unmasked patches in patch order, (B, num_visible). Static shapes and no
    host sync, so the step stays compilable and asynchronous on a GPU."""
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :num_visible]


def gather_visible(x: torch.Tensor, mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Tokens at unmasked positions, in patch order: (B, L, D) -> (B, num_visible, D)."""
    idx = visible_index(mask, num_visible).unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, idx)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, p*p*3), pixel order (row, column, channel) as in the paper's code."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    b, n, _ = x.shape
    g = int(n ** 0.5)
    x = x.reshape(b, g, g, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, g * p, g * p)
