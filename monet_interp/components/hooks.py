"""HookPoint construction with the position axis recorded (used by ``pos_slice`` in caching)."""

from transformer_lens.hook_points import HookPoint


def hook_point(pos_dim: int = 1) -> HookPoint:
    """A TransformerLens HookPoint that knows which axis (counted with the batch axis) is position."""
    point = HookPoint()
    point.pos_dim = pos_dim
    return point
