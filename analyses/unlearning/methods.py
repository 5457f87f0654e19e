"""Methods: a unit set, a selection rule and the statistic it ranks by; the README's sweep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monet_interp.analyses.unlearning.config import RULES, STATISTICS, UnlearningError
from monet_interp.units import ExpertUnits, NeuronUnits, SAEUnits, Unit


@dataclass
class Method:
    """One way to forget: a unit set, a selection rule and the statistic it ranks by.

    name: row label in the tables. rule: "2x", "ratio", "ratio-iter", "random" or "same".
    statistic: "mean" or "freq" (None: run_unlearning's default). fractions: curve grid for
    "ratio" (None: run_unlearning's). match: for "random", the name of the method whose count
    it copies (None: the 2x method on the same unit set, else its first non-random method, else
    the fraction grid);
    for "same", the method whose units it removes (required). factor / min_value: the 2x rule's
    factor and the statistic a unit must exceed on the forget label (0: any activity).
    """

    name: str
    units: Unit
    rule: str = "ratio"
    statistic: str | None = None
    fractions: tuple[float, ...] | None = None
    match: str | None = None
    factor: float = 2.0
    min_value: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UnlearningError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.statistic is not None and self.statistic not in STATISTICS:
            raise UnlearningError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if self.rule == "same" and self.match is None:
            raise UnlearningError(f"method {self.name!r}: rule 'same' needs match=<name of another method>")


def expert_methods(model: Any, rules: Sequence[str] = ("2x", "ratio", "random"), prefix: str | None = None,
                   **unit_kwargs: Any) -> list[Method]:
    """Methods on one MONET model's experts (shared ExpertUnits, so statistics are computed once)."""
    units = ExpertUnits(model, **unit_kwargs)
    prefix = prefix or units.name.replace(" experts", "")
    return [Method(f"{prefix} {rule}", units, rule) for rule in rules]


def default_methods(monet: Any, top1: Any = None, dense: Any = None, sae_bank: Any = None,
                    monet_rules: Sequence[str] = ("2x", "ratio", "random"), top1_rules: Sequence[str] = ("2x",),
                    baseline_rule: str = "ratio", sae_modes: Sequence[str] = ("error",), sae_clamp: float = -2.0,
                    **unit_kwargs: Any) -> list[Method]:
    """The sweep of the README: MONET (2x, ratio, random; named "top-1 MONET" when ``monet`` routes
    top-1), top-1 MONET (2x), dense neurons and SAE features (error term kept, removed features
    clamped to ``sae_clamp`` times their mean active value) with the selective-pruning rule; with
    "spliced" in sae_modes also the same SAE features removed with the reconstruction spliced in.
    unit_kwargs (scope, heads) go to both models' ExpertUnits. Models left None are skipped; random
    controls get their match in :func:`resolve_methods`."""
    prefix = "top-1 MONET" if monet.cfg.moe_routing == "top1" else "MONET-VD" if monet.cfg.is_vertical else "MONET-HD"
    methods = expert_methods(monet, monet_rules, prefix=prefix, **unit_kwargs)
    if top1 is not None:
        methods += expert_methods(top1, top1_rules, prefix="top-1 MONET", **unit_kwargs)
    if dense is not None:
        methods.append(Method(f"dense neurons {baseline_rule}", NeuronUnits(dense), baseline_rule))
    if sae_bank is not None:
        error_name = f"SAE (error kept) {baseline_rule}"
        if "error" in sae_modes:
            methods.append(Method(error_name, SAEUnits(sae_bank, mode="error", clamp=sae_clamp), baseline_rule))
        if "spliced" in sae_modes:  # the same features with the reconstruction spliced in
            spliced = SAEUnits(sae_bank, mode="spliced", clamp=sae_clamp)
            methods.append(Method("SAE (spliced) same features", spliced, "same", match=error_name)
                           if "error" in sae_modes else Method(f"SAE (spliced) {baseline_rule}", spliced, baseline_rule))
    return methods


def resolve_methods(model: Any, methods: Sequence[Any]) -> list[Method]:
    out: list[Method] = []
    shared: dict[str, ExpertUnits] = {}
    for item in methods:
        if isinstance(item, Method):
            out.append(item)
        elif isinstance(item, str):
            if item not in RULES:
                raise UnlearningError(f"unknown method {item!r}: a rule name {RULES} (applied to the model's "
                                      f"experts) or a Method")
            if model is None:
                raise UnlearningError(f"method {item!r} needs a MONET model")
            units = shared.setdefault("experts", ExpertUnits(model))
            out.append(Method(f"{units.name.replace(' experts', '')} {item}", units, item))
        else:
            raise UnlearningError(f"a method is a rule name or a Method, got {type(item).__name__}")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise UnlearningError(f"method names repeat: {names}")
    for m in out:
        if m.rule == "random" and m.match is None:  # the 2x method of the same units, else its first one
            same_units = [x for x in out if x.units is m.units and x.rule != "random"]
            m.match = next((x.name for x in same_units if x.rule == "2x"), same_units[0].name if same_units else None)
        if m.match is not None and m.match not in names:
            raise UnlearningError(f"method {m.name!r} matches unknown method {m.match!r}")
        if m.match is not None and names.index(m.match) > names.index(m.name):
            raise UnlearningError(f"method {m.name!r} matches {m.match!r}, which must come earlier in the list")
        if m.rule == "same":
            other = out[names.index(m.match)]
            if other.units.n_units != m.units.n_units:
                raise UnlearningError(f"method {m.name!r} reuses the units of {m.match!r}, but their unit sets differ "
                                      f"in size ({m.units.n_units} vs {other.units.n_units})")
    return out


__all__ = ["Method", "default_methods", "expert_methods", "resolve_methods"]
