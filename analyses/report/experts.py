"""Experts of a report: ``ExpertRef(group, i, j)``, their checks, and the report's defaults."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_CTX_LEN = 128
DEFAULT_TOP_K = 20
DEFAULT_FINE_BINS = 1024
DEFAULT_HIST_BINS = 40
DEFAULT_SAMPLE_CAP = 20_000
DEFAULT_INTERVALS = 5
DEFAULT_PER_INTERVAL = 4
DEFAULT_CONTEXT_LEFT = 24
DEFAULT_CONTEXT_RIGHT = 6
DEFAULT_N_LOGITS = 10
DEFAULT_N_NEIGHBOURS = 10
DEFAULT_FALLBACK_WINDOWS = 8
DEFAULT_FIRE_THRESHOLD = 0.01  # the default of monet_interp.stats.compute_routing_stats
SPLIT_CANDIDATES = ("val", "test", "all", "train")


class ReportError(ValueError):
    """Bad input to the expert report (unknown expert, empty corpus, ...)."""


_REF_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class ExpertRef:
    """Expert (i, j) of routing group ``group``."""

    group: int
    i: int
    j: int

    @classmethod
    def parse(cls, text: str) -> ExpertRef:
        """``"g:i:j"`` -> ExpertRef(g, i, j)."""
        match = _REF_RE.match(text)
        if not match:
            raise ReportError(f"expert {text!r} is not of the form GROUP:I:J (e.g. 0:3:17)")
        return cls(int(match[1]), int(match[2]), int(match[3]))

    def flat(self, n_experts: int) -> int:
        """The paper's flat id e = i * E + j (per routing group)."""
        return self.i * n_experts + self.j

    @property
    def slug(self) -> str:
        return f"g{self.group}_i{self.i}_j{self.j}"

    def __str__(self) -> str:
        return f"{self.group}:{self.i}:{self.j}"


def check_experts(cfg: Any, experts: Iterable[ExpertRef]) -> list[ExpertRef]:
    """Validate against a MonetConfig; sorted, duplicates removed."""
    out = sorted(set(experts))
    for ref in out:
        if not 0 <= ref.group < cfg.num_routers:
            raise ReportError(f"expert {ref}: routing group {ref.group} out of range (the model has "
                              f"{cfg.num_routers} routing groups)")
        for name, value in (("i", ref.i), ("j", ref.j)):
            if not 0 <= value < cfg.moe_experts:
                raise ReportError(f"expert {ref}: {name}={value} out of range (E={cfg.moe_experts})")
    return out


def first_layer(cfg: Any, group: int) -> int:
    """The router layer of a routing group (its hook_g_* hold the group's factors)."""
    return cfg.layers_of_group(group)[0]


__all__ = ["DEFAULT_CONTEXT_LEFT", "DEFAULT_CONTEXT_RIGHT", "DEFAULT_CTX_LEN", "DEFAULT_FALLBACK_WINDOWS",
           "DEFAULT_FINE_BINS", "DEFAULT_FIRE_THRESHOLD", "DEFAULT_HIST_BINS", "DEFAULT_INTERVALS", "DEFAULT_N_LOGITS",
           "DEFAULT_N_NEIGHBOURS", "DEFAULT_PER_INTERVAL", "DEFAULT_SAMPLE_CAP", "DEFAULT_TOP_K", "ExpertRef",
           "ReportError", "SPLIT_CANDIDATES", "check_experts", "first_layer"]
