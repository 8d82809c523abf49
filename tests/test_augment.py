"""The pretraining augmentation sets' batched path (core.data.BoxAugment) against torchvision and
against itself image by image."""
import random

import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from core.data import BoxAugment, Transformed, TensorImages, pretrain_transform, sample_seed

SETS = ["none", "crop_fixed", "crop_rand", "crop_color_jitter"]
ZERO_ONE = ((0.0,) * 3, (1.0,) * 3)  # mean, std leaving pixel values in [0, 1]


def images(n=12, size=16):
    g = torch.Generator().manual_seed(0)
    return TensorImages(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 10, [str(i) for i in range(10)])


@pytest.mark.parametrize("name", SETS)
def test_a_batch_is_each_image_alone_in_any_batch(name):
    data = Transformed(images(), pretrain_transform(name, 16, (0.5,) * 3, (0.25,) * 3))
    keys = [(i, sample_seed(3, 1, i)) for i in range(12)]
    batch = torch.stack([img for img, _ in data.__getitems__(keys)])
    alone = torch.stack([data[k][0] for k in keys])
    other = torch.stack([img for img, _ in data.__getitems__(keys[::-1])]).flip(0)
    assert batch.shape == (12, 3, 16, 16)
    assert torch.equal(batch, alone) and torch.equal(batch, other)
    again = torch.stack([img for img, _ in data.__getitems__([(i, sample_seed(3, 2, i)) for i in range(12)])])
    if name != "none":  # another epoch, other views
        assert not torch.equal(batch, again)


def test_whole_image_box_is_torchvision_bicubic_resize():
    src = images(4, 8).images
    aug = BoxAugment("none", 16, *ZERO_ONE, pil=None)
    ours = aug.batch(src, [0, 1, 2, 3])
    ref = F.resize(src.float() / 255, [16, 16], interpolation=InterpolationMode.BICUBIC, antialias=False)
    assert (ours - ref.clamp(0, 1)).abs().max() < 1e-5


def test_random_box_matches_torchvision_resized_crop_inside_the_box():
    src = images(1, 16).images
    aug = BoxAugment("crop_rand", 16, *ZERO_ONE, pil=None)
    for seed in range(20):
        top, left, h, w, flip = aug.box(random.Random(seed), 16, 16)
        ours = aug.batch(src, [seed])[0]
        ref = F.resized_crop(src[0].float() / 255, int(top), int(left), int(h), int(w), [16, 16],
                             interpolation=InterpolationMode.BICUBIC, antialias=False).clamp(0, 1)
        if flip:
            ref = ref.flip(-1)
        # output pixels whose 4-tap bicubic support lies inside the box: torchvision replicates the box's
        # edge there, where resampling reads the real neighbouring pixels
        ys = [i for i in range(16) if 1.5 <= (i + 0.5) * h / 16 - 0.5 <= h - 2.5]
        xs = [i for i in range(16) if 1.5 <= (i + 0.5) * w / 16 - 0.5 <= w - 2.5]
        if flip:
            xs = [15 - i for i in xs]
        inner = (ours - ref)[:, ys][:, :, xs]
        assert inner.numel() == 0 or inner.abs().max() < 1e-5, (seed, top, left, h, w, flip)


def test_random_boxes_follow_random_resized_crop():
    aug = BoxAugment("crop_rand", 16, *ZERO_ONE, pil=None)
    boxes = [aug.box(random.Random(s), 32, 32) for s in range(2000)]
    areas = [h * w / 32 ** 2 for _, _, h, w, _ in boxes]
    assert 0.17 < min(areas) < 0.25 and max(areas) == 1.0  # scale (0.2, 1), rounded to pixels
    assert all(0 <= t and 0 <= l and t + h <= 32 and l + w <= 32 for t, l, h, w, _ in boxes)
    assert all(3 / 4 - 0.1 < w / h < 4 / 3 + 0.1 for _, _, h, w, _ in boxes)
    assert 0.45 < sum(f for *_, f in boxes) / len(boxes) < 0.55


def test_pil_images_keep_torchvision_pipeline():
    from PIL import Image

    pil = Image.fromarray(images(1, 16).images[0].permute(1, 2, 0).numpy())
    torch.manual_seed(0)
    out = pretrain_transform("crop_rand", 16, (0.5,) * 3, (0.5,) * 3)(pil)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32


def test_finetune_randaugment_batch_is_each_image_alone_and_keeps_global_rngs():
    """core.eval.data.SeededTimm seeds python's and numpy's RNGs per image and Transformed restores
    them (and torch's) once per batch: each image must come out as it does alone, in any batch
    order, and the python / numpy / torch global streams must be where they were."""
    import numpy as np
    from timm.data import create_transform

    from core.eval.data import SeededTimm

    tf = SeededTimm(create_transform(16, is_training=True, scale=(0.7, 1.0), auto_augment="rand-m9-mstd0.5-inc1",
                                     interpolation="bicubic", re_prob=0.5, re_mode="pixel", mean=(0.5,) * 3,
                                     std=(0.5,) * 3))
    data = Transformed(images(), tf)
    keys = [(i, sample_seed(5, 0, i)) for i in range(12)]
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = random.random(), np.random.rand(), torch.rand(())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    batch = torch.stack([img for img, _ in data.__getitems__(keys)])
    assert (random.random(), np.random.rand(), torch.rand(())) == before  # global streams untouched
    alone = torch.stack([data[k][0] for k in keys])
    other = torch.stack([img for img, _ in data.__getitems__(keys[::-1])]).flip(0)
    assert torch.equal(batch, alone) and torch.equal(batch, other)
    assert len({img.sum().item() for img in batch}) == 12  # augmented, not one image repeated
