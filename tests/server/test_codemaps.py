"""Token orders shared by training and serving."""

import numpy as np
import pytest

from server import codemaps


@pytest.mark.parametrize("layer", codemaps.LAYERS)
def test_orders_are_permutations_and_round_trip(layer):
    shape = codemaps.layer_shape(layer)
    assert sorted(codemaps.order(layer)) == list(range(shape[0] * shape[1]))
    maps = np.random.default_rng(0).integers(0, 512, (3, *shape))
    np.testing.assert_array_equal(codemaps.from_sequence(codemaps.to_sequence(maps, layer), layer), maps)


def test_top_order_is_time_major_frequency_first():
    top = np.arange(128).reshape(32, 4)  # value = f * 4 + t
    seq = codemaps.to_sequence(top, "top")
    assert list(seq[:3]) == [top[0, 0], top[1, 0], top[2, 0]]
    assert seq[32] == top[0, 1]


def test_top_position_i_owns_bottom_positions_4i_to_4i_plus_3():
    top_index = codemaps.to_sequence(np.arange(128).reshape(32, 4), "top")  # top flat index per position
    rows, cols = np.divmod(codemaps.order("bottom"), 8)
    under = (rows // 2) * 4 + cols // 2
    np.testing.assert_array_equal(under.reshape(128, 4), np.repeat(top_index[:, None], 4, axis=1))


def test_upsampled_mask_covers_the_2x2_cells_beneath():
    top = np.zeros((32, 4), bool)
    top[5, 2] = True
    bottom = codemaps.upsample_mask(top)
    assert bottom.shape == (64, 8) and bottom.sum() == 4 and bottom[10:12, 4:6].all()


def test_rectangle_mask_uses_half_open_ranges_and_rejects_bad_ones():
    mask = codemaps.rectangle_mask("bottom", 0, 2, 60, 64)
    assert mask.sum() == 8 and mask[63, 1] and not mask[59, 0]
    for bad in [(0, 0, 0, 1), (0, 9, 0, 1), (-1, 2, 0, 1), (0, 1, 10, 70)]:
        with pytest.raises(ValueError, match="outside"):
            codemaps.rectangle_mask("bottom", *bad)
    with pytest.raises(ValueError, match="unknown layer"):
        codemaps.layer_shape("middle")
