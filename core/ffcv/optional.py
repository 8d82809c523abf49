"""ffcv is optional: imported on first use, with torch's thread count kept (ffcv resets it on import
and in every Loader call); a machine without it gets one line telling how to install it."""
from __future__ import annotations

import contextlib
import functools

import torch

from core.errors import UserError

INSTALL_HINT = "install it with scripts/install_ffcv.sh (pkg-config, libopencv-dev, libturbojpeg0-dev, then pip)"


@contextlib.contextmanager
def keep_torch_threads():
    """ffcv sets torch's thread count on import and in every Loader call; training must keep its own."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def ffcv_available() -> bool:
    try:
        require_ffcv()
        return True
    except UserError:
        return False


@functools.lru_cache(maxsize=1)
def _import_ffcv():
    with keep_torch_threads():
        import ffcv  # noqa: F401
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401
    return ffcv


def require_ffcv():
    """The ffcv module, or a one-line UserError with the install hint."""
    try:
        return _import_ffcv()
    except ImportError as e:  # also a missing libturbojpeg/opencv shared library under ffcv
        raise UserError(f"data.backend=ffcv needs the ffcv package, which cannot be imported ({e}); "
                        f"{INSTALL_HINT}") from None
