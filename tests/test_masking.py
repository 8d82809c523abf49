import pytest
import torch

from core.masking import make_mask, num_masked


@pytest.mark.parametrize("strategy, ratio", [("random", 0.75), ("random", 0.1), ("random", 0.9),
                                             ("block", 0.5), ("block", 0.75), ("grid", 0.75)])
@pytest.mark.parametrize("grid", [8, 14])
def test_exact_count_and_determinism(strategy, ratio, grid):
    m1 = make_mask(strategy, 16, grid, ratio, torch.Generator().manual_seed(3))
    m2 = make_mask(strategy, 16, grid, ratio, torch.Generator().manual_seed(3))
    assert m1.shape == (16, grid * grid) and m1.dtype == torch.bool
    assert (m1.sum(1) == num_masked(grid * grid, ratio)).all()
    assert torch.equal(m1, m2)
    if strategy != "grid":  # grid is the same regular pattern for every image and seed
        m3 = make_mask(strategy, 16, grid, ratio, torch.Generator().manual_seed(4))
        assert not torch.equal(m1, m3)
        assert len({tuple(r.tolist()) for r in m1}) > 1  # per-sample masks differ


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
