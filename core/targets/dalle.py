"""OpenAI's DALL-E dVAE encoder from a local `encoder.pkl` (model.dvae_path), as BEiT used, for the
dvae_token target. The file is a pickled `dall_e` module; its weights are read into a
reimplementation of that encoder, the pickle's class names mapped to inert records
(torch.load(weights_only=True) for the zip format, a restricted unpickler for the legacy one), so
the file can run no code and the `dall_e` package is not needed.
"""
from __future__ import annotations

import os
import pickle
import types
import warnings
import zipfile
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError

LOGIT_LAPLACE_EPS = 0.1  # DALL-E maps [0, 1] pixels into [eps, 1 - eps] before its encoder


class DalleConv(nn.Module):
    """DALL-E's conv layer: parameters named w and b, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_out, n_in, kw, kw))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.w.shape[-1] - 1) // 2)


class DalleBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        hid = n_out // 4
        self.id_path = DalleConv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential()
        for i, (a, b, k) in enumerate([(n_in, hid, 3), (hid, hid, 3), (hid, hid, 3), (hid, n_out, 1)], 1):
            self.res_path.add_module(f"relu_{i}", nn.ReLU())
            self.res_path.add_module(f"conv_{i}", DalleConv(a, b, k))
        self.post_gain = 1 / n_layers ** 2

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """The architecture of OpenAI's DALL-E dVAE encoder (4 groups, 3 max-pools: 8x down), with its
    parameter names, so the weights of encoder.pkl load with strict=True."""

    def __init__(self, n_hid: int = 256, n_blk_per_group: int = 2, vocab: int = 8192, groups: int = 4):
        super().__init__()
        self.vocab = vocab
        n_layers = groups * n_blk_per_group
        self.blocks = nn.Sequential()
        self.blocks.add_module("input", DalleConv(3, n_hid, 7))
        width = n_hid
        for g in range(1, groups + 1):
            out = n_hid * 2 ** (g - 1)
            group = nn.Sequential()
            for i in range(1, n_blk_per_group + 1):
                group.add_module(f"block_{i}", DalleBlock(width, out, n_layers))
                width = out
            if g < groups:
                group.add_module("pool", nn.MaxPool2d(kernel_size=2))
            self.blocks.add_module(f"group_{g}", group)
        self.blocks.add_module("output", nn.Sequential())
        self.blocks.output.add_module("relu", nn.ReLU())
        self.blocks.output.add_module("conv", DalleConv(width, vocab, 1))

    def forward(self, x):
        return self.blocks(x)


class _Pickled:
    """An inert stand-in for a class named in the pickle: it only receives the pickled __dict__."""


# Classes a pickled DALL-E encoder names. Each becomes its own empty subclass of _Pickled: loading
# builds plain attribute holders and never imports or runs the `dall_e` package.
DALLE_CLASSES = ("dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock", "dall_e.utils.Conv2d",
                 "torch.nn.modules.container.Sequential", "torch.nn.modules.activation.ReLU",
                 "torch.nn.modules.pooling.MaxPool2d", "torch.nn.modules.linear.Identity")
_STUBS = [(type(name.rsplit(".", 1)[1], (_Pickled,), {"__module__": __name__}), name) for name in DALLE_CLASSES]
_ALLOWED = {name: cls for cls, name in _STUBS} | {
    "collections.OrderedDict": OrderedDict, "torch.device": torch.device, "torch.Size": torch.Size,
    "builtins.set": set, "__builtin__.set": set,  # protocol 2 spells builtins the Python 2 way
    **{f"torch._utils.{f.__name__}": f for f in (torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2,
                                                 torch._utils._rebuild_parameter)}}


class _RestrictedUnpickler(pickle.Unpickler):
    """For the legacy (non-zip) torch format, which weights_only=True cannot read when it holds a
    module: names resolve only to the inert records and torch's tensor rebuilders above; anything
    else (os.system, ...) is refused, so the file can run no code (Python's documented way to
    restrict unpickling)."""

    def find_class(self, module, name):
        if f"{module}.{name}" in _ALLOWED:
            return _ALLOWED[f"{module}.{name}"]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


_restricted_pickle = types.SimpleNamespace(
    __name__="restricted_pickle", Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load())


def _load_pickled_module(path: str):
    """The zip format (torch >= 1.6) loads with weights_only=True; OpenAI's encoder.pkl is in the
    legacy format (BEiT's bug reports show torch taking its _legacy_load path), read restricted."""
    with torch.serialization.safe_globals(_STUBS):
        if zipfile.is_zipfile(path):
            return torch.load(path, map_location="cpu", weights_only=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch compares the pickled class source with the stubs'
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)


def _collect(obj, prefix: str, out: dict) -> None:
    """Walk pickled modules (_parameters, _buffers, _modules dicts) into a flat state dict."""
    state = getattr(obj, "__dict__", {})
    for name, p in (state.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach() if isinstance(p, torch.Tensor) else p
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out)


_LOADED: set = set()  # (path, size, mtime) of encoders that loaded: checking one again costs nothing


def _file_key(path: str) -> tuple:
    if not os.path.isfile(path):
        raise UserError(f"model.dvae_path={path} does not exist (get encoder.pkl from "
                        f"https://cdn.openai.com/dall-e/encoder.pkl, see docs/targets.md)")
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def check_dvae_path(path: str) -> None:
    """Before a run starts (bad input: one line, nothing written): DALL-E's encoder file is there and
    the safe loader reads an encoder from it. Loading is the only way to know (a foreign pickle, one
    that would run code, a truncated file), so the first check loads it; later ones in this process
    find it in _LOADED."""
    if not path:
        return
    if _file_key(path) not in _LOADED:
        load_dalle_encoder(path)


def load_dalle_encoder(path: str) -> DalleEncoder:
    """OpenAI's encoder.pkl (or a plain state dict of it) -> DalleEncoder. One-line UserError if the
    file is missing or is not such an encoder."""
    key = _file_key(path)
    try:
        obj = _load_pickled_module(path)
    except Exception as e:  # torch raises many types for foreign, truncated or unsafe files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"model.dvae_path={path} is not a DALL-E encoder.pkl ({first[:160]})") from None
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        state = {}
        _collect(obj, "", state)
    try:
        n_hid, _, kw, _ = state["blocks.input.w"].shape
        vocab = state["blocks.output.conv.w"].shape[0]
        n_blk = len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.")})
        if kw != 7:
            raise KeyError("blocks.input.w")
        enc = DalleEncoder(n_hid, n_blk, vocab)
        enc.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"model.dvae_path={path} does not hold DALL-E encoder weights ({first[:160]})") from None
    _LOADED.add(key)
    return enc.eval().requires_grad_(False)
