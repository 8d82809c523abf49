"""Encoder weights for an evaluation: an external checkpoint read safely, the encoder's keys checked
strictly against model.arch, and the frozen encoder built from them."""
from __future__ import annotations

import sys

import torch

from core import checkpoint
from core.config import Config
from core.errors import CheckpointError
from core.model import ARCHS, ViTEncoder


# Keys of a pretraining checkpoint that are not the encoder's (the decoder, mask tokens) and keys
# of a fine-tuned one that every evaluation replaces (the head).
NOT_ENCODER = ("decoder_", "mask_token", "encoder_mask_token", "head.", "fc_norm.")


def load_init(path: str) -> tuple[dict, str]:
    """(weights, sha256) of an external checkpoint: {'model': state dict} as the MAE authors
    released them, or ours. weights_only=True: a pickle that would run code is refused."""
    obj = checkpoint.load_file(path)
    state = checkpoint.model_state(obj, path)
    ignored = checkpoint.ignored_keys(obj)
    if ignored:  # an official training checkpoint: args (an argparse.Namespace), optimizer, epoch, scaler
        print(f"note: {path}: using its 'model' weights, ignoring {', '.join(ignored)}", file=sys.stderr)
    return state, checkpoint.sha256(path)


def is_finetuned_avg(state: dict) -> bool:
    """The layout of the official fine-tuned classifiers: fc_norm and head, no final norm."""
    return "fc_norm.weight" in state and "norm.weight" not in state


def encoder_state(state: dict, arch: str, img_size: int, source: str, final_norm: bool = True) -> dict:
    """The encoder's weights out of a checkpoint, checked strictly against model.arch: every
    encoder key present with its shape, nothing unknown besides the decoder and head.
    final_norm=False: the encoder of a fine-tuned classifier that pools before its fc_norm."""
    if final_norm and is_finetuned_avg(state):
        raise CheckpointError(f"{source} is a fine-tuned classifier (fc_norm and head, no final norm): evaluate "
                              f"it with `eval finetune --eval-only`, or pass a pretraining checkpoint")
    state = {k: v for k, v in state.items() if not k.startswith(NOT_ENCODER)}
    with torch.device("meta"):  # shapes only, no memory
        want = {k: v.shape for k, v in ViTEncoder(arch, img_size).state_dict().items()
                if final_norm or not k.startswith("norm.")}
    a = ARCHS[arch]
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        if w.shape[0] != a["embed_dim"]:
            guess = [n for n, s in ARCHS.items() if s["embed_dim"] == w.shape[0]]
            hint = f" ({guess[0]}?)" if guess else ""
            raise CheckpointError(f"{source}: checkpoint has embed dim {w.shape[0]}{hint} but model.arch={arch} "
                                  f"has {a['embed_dim']}")
        if w.shape[-1] != a["patch_size"]:
            raise CheckpointError(f"{source}: checkpoint has patch size {w.shape[-1]} but model.arch={arch} "
                                  f"has {a['patch_size']}")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if depth and depth != a["depth"]:
        raise CheckpointError(f"{source}: checkpoint has {depth} blocks but model.arch={arch} has {a['depth']}")
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else "")]
                 if unexpected else [])
        raise CheckpointError(f"{source} is not a {arch} encoder checkpoint: {'; '.join(parts)}")
    for k, shape in want.items():
        if state[k].shape != shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(state[k].shape)} but model.arch={arch} at "
                                  f"model.img_size={img_size} needs {tuple(shape)}")
    return state


def frozen_encoder(cfg: Config, state, device) -> torch.nn.Module:
    """The encoder of `state` (a state dict), or `state` itself when it is a built feature module
    (the pixel baseline, core.eval.baselines), frozen in eval mode."""
    if isinstance(state, torch.nn.Module):
        enc = state
    else:
        enc = ViTEncoder(cfg.model.arch, cfg.model.img_size)
        enc.load_state_dict(state, strict=True)
    enc.requires_grad_(False)
    return enc.to(device).eval()
