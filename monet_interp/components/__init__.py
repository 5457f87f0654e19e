"""Building blocks of HookedMONET, one concept per module."""

from monet_interp.components.attention import Attention, KeyValueCache
from monet_interp.components.block import MonetBlock
from monet_interp.components.embed import Embed, Unembed
from monet_interp.components.moe import MonetMoE, mix_hd, mix_vd, relu2
from monet_interp.components.norm import RMSNorm
from monet_interp.components.router import MonetRouter, RoutingFactors

__all__ = ["Attention", "KeyValueCache", "MonetBlock", "Embed", "Unembed", "MonetMoE", "mix_hd",
           "mix_vd", "relu2", "RMSNorm", "MonetRouter", "RoutingFactors"]
