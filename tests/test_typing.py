"""The jaxtyping annotations of the core are checked at run time under pytest."""

import pytest
import torch

from monet_interp.components.moe import mix_hd


def test_shape_annotations_are_enforced():
    x = torch.rand(3, 8, 4)  # [tokens, expert, m]
    g = torch.rand(3, 2, 8)  # [tokens, head, expert]
    z, c = mix_hd(x, g, g)
    assert z.shape == (3, 8, 4) and c.shape == (3, 8)
    with pytest.raises(Exception, match="(?i)type-check|shape|dimension|jaxtyping"):
        mix_hd(x, torch.rand(3, 2, 7), g)  # expert axis disagrees: 7 vs 8
