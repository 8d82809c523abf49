import pytest
import torch

from core.config import build_config
from core.errors import ConfigError
from core.masking import make_mask, num_masked
from core.registry import MASKS


@pytest.mark.parametrize("strategy", list(MASKS))  # every registered one, a plugin's too (MAE_PLUGINS)
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("grid", [8, 14])
def test_exact_count_and_determinism(strategy, ratio, grid):
    try:  # the ratios and grids the strategy's own config check accepts (grid masking: 0.75 on 8 x 8 only)
        build_config("tiny", [f"model.mask_strategy={strategy}", f"model.mask_ratio={ratio}",
                              f"model.img_size={grid * 4}"])
    except ConfigError:
        pytest.skip(f"{strategy} refuses ratio {ratio} on a {grid}x{grid} grid at config time")
    m1 = make_mask(strategy, 16, grid, ratio, torch.Generator().manual_seed(3))
    m2 = make_mask(strategy, 16, grid, ratio, torch.Generator().manual_seed(3))
    assert m1.shape == (16, grid * grid) and m1.dtype == torch.bool
    assert (m1.sum(1) == num_masked(grid * grid, ratio)).all()
    assert torch.equal(m1, m2)
    if MASKS.entry(strategy).extra.get("per_sample", True):  # grid: one regular pattern for every image and seed
        m3 = make_mask(strategy, 16, grid, ratio, torch.Generator().manual_seed(4))
        assert not torch.equal(m1, m3)
        assert len({tuple(r.tolist()) for r in m1}) > 1  # per-sample masks differ


def test_the_builtin_strategies_are_registered_and_config_reads_the_registry():
    assert list(MASKS)[:3] == ["random", "block", "grid"]
    with pytest.raises(ConfigError, match="model.mask_strategy='nope' is not one of: random, block, grid"):
        build_config("tiny", ["model.mask_strategy=nope"])


def test_num_masked_matches_the_paper_code():
    assert num_masked(196, 0.75) == 147
    assert num_masked(64, 0.75) == 48
    assert num_masked(4, 0.99) == 3  # one patch always stays visible


def test_block_masks_are_blocky():
    """Masked patches cluster: far more masked neighbours than random masking gives."""
    def neighbour_share(m, g):
        m = m.view(-1, g, g).float()
        same = (m[:, 1:, :] * m[:, :-1, :]).sum() + (m[:, :, 1:] * m[:, :, :-1]).sum()
        return same / m.sum()
    g = torch.Generator().manual_seed(0)
    block = neighbour_share(make_mask("block", 64, 14, 0.5, g), 14)
    rand = neighbour_share(make_mask("random", 64, 14, 0.5, g), 14)
    assert block > rand * 1.4


def test_grid_keeps_one_of_each_2x2():
    m = make_mask("grid", 2, 8, 0.75, None).view(2, 8, 8)
    assert not m[:, ::2, ::2].any() and m[:, 1::2, :].all()
