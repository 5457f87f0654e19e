"""monet-interp: see, delete and steer the experts of MONET language models.

    from monet_interp import HookedMONET
    model = HookedMONET.from_pretrained("monet-vd-tiny")
    logits, cache = model.run_with_cache("def main():")
"""

from monet_interp.config import ConfigError, MonetConfig, released_presets
from monet_interp.loading import CheckpointError
from monet_interp.model import HookedMONET
from monet_interp.tokenizer import MonetTokenizer

__all__ = ["HookedMONET", "MonetConfig", "MonetTokenizer", "ConfigError", "CheckpointError", "released_presets"]
__version__ = "0.1.0"
