"""``monet-interp steer ...``: steering runs from the command line.

    monet-interp steer run --models monet-vd-tiny monet-top1-tiny dense-tiny --corpus data/corpus \\
        --concepts python c rust shakespeare --methods monet top1 sae diffmean --out results/steering
    monet-interp steer generate --model monet-vd-tiny --corpus data/corpus --concept python \\
        --method monet --alpha 2 --prompt "int main(void) {"

``run`` writes generations.csv, curves.csv, summary.csv, table_harmonic.csv, selections.json and
steering.html (a standalone page around the report fragment) and prints the tables.
``generate`` prints one prompt's unsteered and steered continuations. ``table --run DIR [DIR ...]``
prints the README's markdown tables of saved runs (several runs over different models are combined).
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from typing import Any

from monet_interp.analyses.cli.common import CliError
from monet_interp.editing.interventions import BOOST_OPS, TOP1_GATES
from monet_interp.editing.router_steering import MODES as ROUTER_MODES

_TUPLE_FIELDS = ("monet_groups", "monet_layers", "monet_heads", "top1_groups", "steermoe_groups", "diffmean_layers",
                 "sae_layers", "prompt_labels")


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    from monet_interp.analyses.steering import SteeringConfig

    d = SteeringConfig()
    p.add_argument("--alphas", type=float, nargs="+", default=list(d.alphas), help="shared factor grid (0 is added)")
    p.add_argument("--n-prompts", type=int, default=d.n_prompts, help="prompts per concept (half select alpha)")
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--prompt-labels", nargs="+", default=None, help="labels prompts come from (default: other "
                   "concepts of the same kind)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--stat-windows", type=int, default=d.stat_windows)
    p.add_argument("--stat-tokens", type=int, default=d.stat_tokens)
    p.add_argument("--kl-windows", type=int, default=d.kl_windows)
    p.add_argument("--monet-k", type=int, default=d.monet_k, help="experts per routing group")
    p.add_argument("--monet-op", choices=BOOST_OPS, default=d.monet_op)
    p.add_argument("--monet-groups", type=int, nargs="+", default=None)
    p.add_argument("--monet-layers", type=int, nargs="+", default=None, help="edit these layers only")
    p.add_argument("--monet-heads", type=int, nargs="+", default=None, help="per-head edits on these heads")
    p.add_argument("--monet-selection", choices=("skew", "attribution"), default=d.monet_selection)
    p.add_argument("--rank", choices=("usage", "skew"), default=d.rank,
                   help="unit ranking (experts, top-1 targets, SAE features): most used among those passing the "
                        "2x rule, or largest ratio")
    p.add_argument("--top1-heads", type=int, default=d.top1_heads, help="heads replaced per routing group")
    p.add_argument("--top1-gate", choices=TOP1_GATES, default=d.top1_gate)
    p.add_argument("--top1-groups", type=int, nargs="+", default=None)
    p.add_argument("--top1-any-routing", action="store_true", help="also replace experts in non-top-1 models")
    p.add_argument("--steermoe-heads", type=int, default=None,
                   help="SteerMoE: heads per routing group whose router logits are forced (default: all)")
    p.add_argument("--steermoe-mode", choices=ROUTER_MODES, default=d.steermoe_mode)
    p.add_argument("--steermoe-groups", type=int, nargs="+", default=None)
    p.add_argument("--diffmean-site", choices=("mlp_out", "resid_post"), default=d.diffmean_site)
    p.add_argument("--diffmean-layers", type=int, nargs="+", default=None)
    p.add_argument("--sae-layers", type=int, nargs="+", default=None)
    p.add_argument("--sae-k", type=int, default=d.sae_k)
    p.add_argument("--sae-scale", choices=("diffmean", "activation"), default=d.sae_scale,
                   help="SAE vector norm: DiffMean's at the layer (same push size) or sum of mean activations")
    p.add_argument("--no-train-saes", dest="train_saes", action="store_false",
                   help="skip the SAE method for models without given SAEs")


def config_from_args(args: argparse.Namespace) -> Any:
    from monet_interp.analyses.steering import SteeringConfig

    known = {f.name for f in fields(SteeringConfig)}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    values["do_sample"] = not getattr(args, "greedy", False)
    for key in _TUPLE_FIELDS + ("alphas",):
        if key in values:
            values[key] = tuple(values[key])
    return SteeringConfig(**values)


def _run(args: argparse.Namespace) -> None:
    import pandas as pd

    from monet_interp.analyses.steering import run_steering

    cfg = config_from_args(args)
    result = run_steering(args.models, args.corpus, concepts=args.concepts, methods=args.methods, config=cfg,
                          verbose=not args.quiet)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print("\nHarmonic mean (report half) -- methods x concepts")
        print(result.table("harmonic").round(3).to_string())
        print("\nMean over concepts")
        print(result.overview().to_string())
        print("\nBest method per (model, concept)")
        print(result.winners().round(3).to_string(index=False))
    for note in result.notes:
        print(f"note: {note}")
    if args.out:
        print(f"wrote {result.save(args.out)}")


def _table(args: argparse.Namespace) -> None:
    from monet_interp.analyses.steering import SteeringResult

    print(SteeringResult.concat([SteeringResult.load(r) for r in args.run]).markdown(digits=args.digits))


def _generate(args: argparse.Namespace) -> None:
    from monet_interp.analyses import steering as S
    from monet_interp.analyses.steering.methods import choose_interventions
    from monet_interp.analyses.steering.texts import statistics_windows
    from monet_interp.data import open_corpus

    cfg = config_from_args(args)
    result_models = S.resolve_models([args.model])
    model = next(iter(result_models.values()))
    corpus = open_corpus(args.corpus, verify=False)
    if args.concept not in corpus.labels:
        raise CliError(f"concept {args.concept!r} is not a label of the corpus")
    others = args.against or [l for l in corpus.labels if l != args.concept and
                              corpus.label_kind(l) == corpus.label_kind(args.concept)][:4]
    windows = statistics_windows(lambda label: corpus.texts(label, "train", 4 * cfg.stat_windows),
                                 [args.concept, *others], cfg, model._require_tokenizer().encode)
    stats = S.collect_label_stats(model, windows, batch_size=cfg.batch_size)
    # the same selection as ``steer run`` (top-1 replacement on any MONET routing, as this command always did)
    cfg = replace(cfg, top1_any_routing=True)
    iv = choose_interventions(model, stats, windows, args.concept, others, [args.method], cfg, {}).get(args.method)
    if iv is None:
        raise CliError(f"--method {args.method} needs a MONET model; {args.model} is not one")
    print(f"intervention: {iv.describe()}")
    prompt = args.prompt
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
                  top_k=cfg.top_k, seed=cfg.seed)
    print(f"--- unsteered\n{prompt}{model.generate(prompt, **kwargs)[len(prompt):]}")
    for alpha in args.alpha:
        with iv.context(model, alpha):
            text = model.generate(prompt, **kwargs)
        print(f"--- {args.method} alpha={alpha:g}\n{prompt}{text[len(prompt):]}")


def register(subparsers: Any) -> argparse.ArgumentParser:
    from monet_interp.analyses.steering.config import METHODS

    steer = subparsers.add_parser("steer", help="steer generation with experts, SAE features or DiffMean")
    sub = steer.add_subparsers(dest="steer_command", metavar="SUBCOMMAND")
    run = sub.add_parser("run", help="evaluate steering methods x concepts over an alpha grid")
    run.add_argument("--models", nargs="+", required=True, help="embedded names or checkpoint folders")
    run.add_argument("--corpus", required=True, help="corpus folder (monet-interp corpus build)")
    run.add_argument("--concepts", nargs="+", default=None, help="target labels (default: a code/text mix)")
    run.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    run.add_argument("--out", default=None, help="folder for tables, selections and steering.html")
    run.add_argument("--quiet", action="store_true")
    _add_config_arguments(run)
    run.set_defaults(func=_run)
    gen = sub.add_parser("generate", help="one prompt, unsteered vs steered")
    gen.add_argument("--model", required=True)
    gen.add_argument("--corpus", required=True)
    gen.add_argument("--concept", required=True)
    gen.add_argument("--against", nargs="+", default=None, help="labels to contrast with (default: up to 4 of "
                     "the same kind)")
    gen.add_argument("--method", choices=("monet", "top1", "diffmean", "steermoe"), default="monet")
    gen.add_argument("--alpha", type=float, nargs="+", default=[2.0])
    gen.add_argument("--prompt", required=True)
    _add_config_arguments(gen)
    gen.set_defaults(func=_generate)

    table = sub.add_parser("table", help="markdown tables (README) of a saved steering run")
    table.add_argument("--run", required=True, nargs="+",
                       help="folder(s) written by `steer run --out` (several: runs over different models)")
    table.add_argument("--digits", type=int, default=2)
    table.set_defaults(func=_table)

    def _help(args: argparse.Namespace) -> None:
        steer.print_help()

    steer.set_defaults(func=_help)
    return steer


__all__ = ["config_from_args", "register"]
