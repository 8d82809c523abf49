"""The ffcv decoder of every augmentation set: decode, seeded crop, resize, flip, colour jitter and
normalise in one parallel numba loop."""
from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from core.ffcv.kernels import fixed_crop, flip_lr, jit, jitter_one, normalise_chw, sample_seed


@functools.lru_cache(maxsize=1)
def seeded_crop_decoder():
    """Our ffcv decoder class. It subclasses ffcv's, so it is defined on first use: the loaders (and
    core.train) import without ffcv."""
    # optional dependency: these imports need ffcv
    from ffcv.fields.rgb_image import (IMAGE_MODES, ResizedCropRGBImageDecoder, get_center_crop,
                                       get_random_crop)
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler

    crops = {"random_resized": get_random_crop, "center": get_center_crop, "fixed": fixed_crop}

    class SeededCropDecoder(ResizedCropRGBImageDecoder):
        """Decode, crop (random_resized: scale/ratio; center: ratio of the shorter side; fixed:
        frac of the shorter side at a random place), resize to output_size, optionally flip and
        colour-jitter (brightness, contrast, saturation strengths), and write normalised float32
        CHW: one parallel loop (each loop costs seconds of numba compilation per Loader), and
        the normalisation costs a pass over uint8 pixels in the worker threads rather than a
        strided float copy on the training thread."""

        def __init__(self, output_size, crop: str, scale, ratio, flip: bool, salt: int, mean, std, jitter=None):
            super().__init__(output_size)
            self.crop, self.scale, self.ratio, self.flip, self.salt = crop, scale, ratio, flip, salt
            self.jitter = jitter
            std = np.asarray(std, dtype=np.float32)
            self.mul = (1.0 / (255.0 * std)).astype(np.float32)  # (x/255 - mean)/std = x*mul + add
            self.add = (-np.asarray(mean, dtype=np.float32) / std).astype(np.float32)

        @property
        def get_crop_generator(self):
            return crops[self.crop]

        def declare_state_and_memory(self, previous_state):
            state, (_, decoded) = super().declare_state_and_memory(previous_state)
            h, w = self.output_size
            out = (3, h, w)
            return (replace(state, shape=out, dtype=np.dtype("<f4")),
                    (AllocationQuery(out, np.dtype("<f4")), decoded, AllocationQuery((h, w, 3), np.dtype("<u1"))))

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read, my_range = self.memory_read, Compiler.get_iterator()
            imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
            get_crop_c, seed_c, flip_c = jit(self.get_crop_generator), jit(sample_seed), jit(flip_lr)
            jitter_c, chw_c = jit(jitter_one), jit(normalise_chw)
            scale = np.array(self.scale, dtype=np.float64) if isinstance(self.scale, tuple) else float(self.scale)
            ratio = np.array(self.ratio, dtype=np.float64) if isinstance(self.ratio, tuple) else float(self.ratio)
            flip, salt, mul, add = self.flip, self.salt, self.mul, self.add
            do_jitter = self.jitter is not None
            jb, jc, js = self.jitter or (0.0, 0.0, 0.0)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage, crop_storage = my_storage
                first = batch_indices[0]
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    np.random.seed(seed_c(salt, first, source_ix))  # numba's per-thread generator
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    if field["mode"] == jpg:
                        temp_buffer = temp_storage[dst_ix]
                        imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                        temp_buffer = temp_buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                    else:
                        temp_buffer = image_data.reshape(height, width, 3)
                    i, j, h, w = get_crop_c(height, width, scale, ratio)
                    crop = crop_storage[dst_ix]
                    resize_crop_c(temp_buffer, i, i + h, j, j + w, crop)
                    if flip and np.random.random() < 0.5:
                        flip_c(crop)
                    if do_jitter:  # in place, on a random stream of its own
                        jitter_c(crop, crop, seed_c(salt, first, source_ix) ^ np.uint32(0x5BD1E995), jb, jc, js)
                    chw_c(crop, destination[dst_ix], mul, add)
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return SeededCropDecoder
