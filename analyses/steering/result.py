"""SteeringResult: the tables of a steering run (saved, loaded, combined) and their summary."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monet_interp.analyses.steering.metrics import harmonic_mean, normalise_concept, steerability


@dataclass
class SteeringResult:
    """Tables of a steering run.

    generations: one row per (model, method, concept, alpha, prompt). curves: means per (model,
    method, concept, alpha, half) with half in select/report/all. summary: per (model, method,
    concept) the alpha chosen on the select half and the report-half metrics at it, plus the
    steerability over all prompts. selections: the chosen units. notes: skipped methods etc.
    """

    generations: Any
    curves: Any
    summary: Any
    selections: dict[str, Any]
    classifier_accuracy: float
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def table(self, metric: str = "harmonic", models: bool = True) -> Any:
        """A methods x concepts pivot of a summary column (rows (model, method) when models)."""
        index = ["model", "method"] if models else ["method"]
        return self.summary.pivot_table(index=index, columns="concept", values=metric, aggfunc="mean")

    def overview(self) -> Any:
        """Mean over concepts of the main summary columns per (model, method)."""
        cols = ["alpha", "concept_score", "concept_norm", "fluency", "harmonic", "kl", "dlogp", "distinct2",
                "slope", "wrong_way"]
        return self.summary.groupby(["model", "method"])[cols].mean().round(3)

    def winners(self, metric: str = "harmonic") -> Any:
        """Per (model, concept), the method with the highest metric (ties: listed together)."""
        import pandas as pd

        rows = []
        for (m, c), grp in self.summary.groupby(["model", "concept"]):
            best = grp[metric].max()
            rows.append({"model": m, "concept": c, metric: best,
                         "winner": "/".join(sorted(grp.loc[grp[metric] == best, "method"]))})
        return pd.DataFrame(rows)

    def markdown(self, digits: int = 2) -> str:
        """Markdown tables for a README (:func:`render.markdown`)."""
        from monet_interp.analyses.steering import render

        return render.markdown(self, digits)

    @classmethod
    def load(cls, folder: str | Path) -> SteeringResult:
        """A result saved with :meth:`save` (tables from the CSVs, the rest from selections.json)."""
        import pandas as pd

        root = Path(folder)
        missing = [n for n in ("generations.csv", "curves.csv", "summary.csv", "selections.json")
                   if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{root} is not a saved steering run (missing {', '.join(missing)})")
        meta = json.loads((root / "selections.json").read_text())
        return cls(pd.read_csv(root / "generations.csv", keep_default_na=False, na_values=[""]),
                   pd.read_csv(root / "curves.csv"), pd.read_csv(root / "summary.csv"),
                   meta.get("selections", {}), float(meta.get("classifier_accuracy", float("nan"))),
                   meta.get("config", {}), list(meta.get("notes", [])), dict(meta.get("timings", {})))

    @classmethod
    def concat(cls, results: Sequence[SteeringResult]) -> SteeringResult:
        """One result from runs over different models (e.g. models run in parallel processes). The
        runs must share their configuration and concepts' classifier (same corpus, same labels)."""
        import pandas as pd

        results = list(results)
        if not results:
            raise ValueError("concat needs at least one steering result")
        first = results[0]
        for r in results[1:]:
            if r.config != first.config:
                raise ValueError("steering runs with different configurations cannot be combined")
            a, b = first.classifier_accuracy, r.classifier_accuracy
            if not ((math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-9)):
                raise ValueError("steering runs with different classifiers (accuracy "
                                 f"{a:.4f} vs {b:.4f}) cannot be combined")
        models = [m for r in results for m in dict.fromkeys(r.summary["model"])]
        if len(models) != len(set(models)):
            raise ValueError(f"a model appears in more than one run: {models}")
        return cls(pd.concat([r.generations for r in results], ignore_index=True),
                   pd.concat([r.curves for r in results], ignore_index=True),
                   pd.concat([r.summary for r in results], ignore_index=True),
                   {k: v for r in results for k, v in r.selections.items()}, first.classifier_accuracy,
                   first.config, [n for r in results for n in r.notes],
                   {k: v for r in results for k, v in r.timings.items()})

    def figures(self) -> dict[str, Any]:
        """plotly figures of the curves (:func:`render.figures`)."""
        from monet_interp.analyses.steering import render

        return render.figures(self)

    def examples(self, per_concept: int = 1) -> Any:
        """Report-half example generations (:func:`render.examples`)."""
        from monet_interp.analyses.steering import render

        return render.examples(self, per_concept)

    def html_section(self, include_plotlyjs: bool | str = False, max_examples: int = 12) -> str:
        """An HTML fragment (a <section>) for a report (:func:`render.html_section`)."""
        from monet_interp.analyses.steering import render

        return render.html_section(self, include_plotlyjs, max_examples)

    def save(self, folder: str | Path, html_page: bool = True) -> Path:
        """generations.csv, curves.csv, summary.csv, tables, selections.json and (html_page)
        steering.html (the fragment with plotly.js inlined, viewable offline)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.generations.to_csv(out / "generations.csv", index=False)
        self.curves.to_csv(out / "curves.csv", index=False)
        self.summary.to_csv(out / "summary.csv", index=False)
        self.table("harmonic").to_csv(out / "table_harmonic.csv")
        meta = {"config": self.config, "classifier_accuracy": self.classifier_accuracy, "notes": self.notes,
                "timings": self.timings, "selections": self.selections}
        (out / "selections.json").write_text(json.dumps(meta, indent=1, default=str))
        if html_page:
            (out / "steering.html").write_text(self.html_section(include_plotlyjs=True))
        return out


def summarise(gens: Any, alphas: Sequence[float]) -> tuple[Any, Any]:
    """(curves, summary) from the per-generation table (see SteeringResult)."""
    import pandas as pd

    keys = ["model", "method", "concept", "alpha"]
    frames = []
    for half in ("select", "report", "all"):
        sub = gens if half == "all" else gens[gens["half"] == half]
        agg = sub.groupby(keys, sort=False).agg(
            concept_score=("hit", "mean"), base_score=("base_hit", "mean"), p_target=("p_target", "mean"),
            fluency=("fluency", "mean"), distinct2=("distinct2", "mean"), dlogp=("dlogp", "mean"),
            kl=("kl", "mean"), n=("hit", "size")).reset_index()
        agg["half"] = half
        frames.append(agg)
    curves = pd.concat(frames, ignore_index=True)
    curves["concept_norm"] = normalise_concept(curves["concept_score"], curves["base_score"])
    curves["harmonic"] = harmonic_mean(curves["concept_norm"].to_numpy(), curves["fluency"].to_numpy())
    rows = []
    for (model, method, concept), grp in curves.groupby(["model", "method", "concept"], sort=False):
        sel = grp[grp["half"] == "select"].copy()
        # best harmonic; ties -> higher concept gain, then lower KL, then smaller alpha
        sel = sel.assign(_h=sel["harmonic"].fillna(-1), _c=sel["concept_norm"].fillna(-1), _kl=sel["kl"].fillna(np.inf))
        best = sel.sort_values(["_h", "_c", "_kl", "alpha"], ascending=[False, False, True, True]).iloc[0]
        alpha = float(best["alpha"])
        rep = grp[(grp["half"] == "report") & (grp["alpha"] == alpha)]
        rep = rep.iloc[0] if len(rep) else best
        sub = gens[(gens["model"] == model) & (gens["method"] == method) & (gens["concept"] == concept)]
        prop = sub.pivot_table(index="prompt_idx", columns="alpha", values="dlogp", aggfunc="mean")
        prop = prop.reindex(columns=sorted(prop.columns))
        st = steerability(list(prop.columns), prop.to_numpy()) if prop.shape[1] >= 2 else {"slope": np.nan,
                                                                                          "wrong_way": np.nan}
        rows.append({"model": model, "method": method, "concept": concept, "alpha": alpha,
                     "select_harmonic": float(best["harmonic"]), "concept_score": float(rep["concept_score"]),
                     "base_score": float(rep["base_score"]), "concept_norm": float(rep["concept_norm"]),
                     "fluency": float(rep["fluency"]), "harmonic": float(rep["harmonic"]), "kl": float(rep["kl"]),
                     "dlogp": float(rep["dlogp"]), "p_target": float(rep["p_target"]),
                     "distinct2": float(rep["distinct2"]), "slope": st["slope"], "wrong_way": st["wrong_way"],
                     "n_report": int(rep["n"])})
    return curves, pd.DataFrame(rows)


__all__ = ["SteeringResult", "summarise"]
