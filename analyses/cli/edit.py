"""``monet-interp edit``: apply a JSON expert-edit file and show what it changes.

    monet-interp edit --edits edits.json --prompt "def main():" --prompt "int main(void) {"
    monet-interp edit --model PATH --edits edits.json --corpus data/corpus --labels python c --out runs/edit

The edit file is an ``EditSet`` (``EditSet(edits).to_json(path)``) or a bare JSON list, e.g.
``[{"i": 3, "j": 7, "op": "prune", "group": 0}, {"i": 5, "j": 1, "op": "set", "value": 0.5, "layer": 2}]``;
it is checked against the model before anything runs. With ``--prompt``: next-token loss of each
prompt and its continuation before and after the edits. With ``--corpus``: loss, bits per byte and
top-1 accuracy on held-out windows of every label (``--split``, default test) before and after,
written to ``OUT/edit_effect.csv`` with ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from monet_interp.analyses.cli.common import positive_int


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("edit", help="apply a JSON expert-edit file to prompts or a held-out set; "
                                                "show loss and generations before/after",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="monet-vd-tiny", help="embedded name, checkpoint folder or hub id")
    parser.add_argument("--edits", required=True, help="JSON edit file (EditSet or a list of edits)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--corpus", default=None, help="built corpus folder: measure held-out loss per label")
    parser.add_argument("--labels", nargs="+", default=None, help="corpus labels to measure (default all)")
    parser.add_argument("--split", default="test", help="corpus split (default test)")
    parser.add_argument("--tokens-per-label", type=positive_int, default=2048)
    parser.add_argument("--seq-len", type=positive_int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generated tokens per prompt (0: none)")
    parser.add_argument("--sample", action="store_true", help="sample (temperature 0.8, top-k 40) instead of greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--out", default=None, help="folder for edit_effect.csv / prompts.csv")
    parser.set_defaults(func=run_edit_command)
    return parser


def describe_edits(edits: Any) -> str:
    """"12 edits: prune 10, set 2; scopes group 0 (10), layer 2 (2)"."""
    from collections import Counter

    ops = Counter(e.op for e in edits)
    scopes = Counter(f"layer {e.layer}" if e.layer is not None else f"group {e.group}" for e in edits)
    heads = sum(1 for e in edits if e.heads is not None)
    text = (f"{len(edits)} edits: " + ", ".join(f"{op} {n}" for op, n in ops.items()) + "; scopes "
            + ", ".join(f"{s} ({n})" for s, n in scopes.items()))
    return text + (f"; {heads} per-head" if heads else "")


def prompt_effects(model: Any, edits: Any, prompts: list[str], max_new_tokens: int, sample: bool,
                   seed: int) -> list[dict[str, Any]]:
    """Loss (nats/token over each prompt) and continuation before and after the edits."""
    import torch

    from monet_interp.analyses.cli.common import CliError

    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sample, temperature=0.8, top_k=40 if sample else None,
                  seed=seed, verbose=False)
    rows = []
    for prompt in prompts:
        tokens = model.to_tokens(prompt)
        if tokens.shape[1] < 2:
            raise CliError(f"prompt {prompt!r} is a single token; a loss needs at least two")
        with torch.no_grad():
            before = model(tokens, return_type="loss").item()
            gen_before = model.generate(prompt, **kwargs)[len(prompt):] if max_new_tokens > 0 else ""
            with model.edit_experts(edits):
                after = model(tokens, return_type="loss").item()
                gen_after = model.generate(prompt, **kwargs)[len(prompt):] if max_new_tokens > 0 else ""
        rows.append({"prompt": prompt, "tokens": int(tokens.shape[1]), "loss_before": before, "loss_after": after,
                     "delta_loss": after - before, "generation_before": gen_before, "generation_after": gen_after})
    return rows


def corpus_effects(model: Any, edits: Any, corpus_dir: str, labels: list[str] | None, split: str,
                   tokens_per_label: int, seq_len: int, batch_size: int) -> Any:
    """Held-out metrics per label before and after the edits (pandas, one row per label)."""
    import pandas as pd

    from monet_interp.analyses import report as R
    from monet_interp import evaluation as U
    from monet_interp.analyses.cli.common import CliError
    from monet_interp.data.corpus import Corpus

    corpus = Corpus.load(corpus_dir)
    try:
        R.resolve_split(corpus, split)
        R.check_labels(corpus, labels)
    except R.ReportError as err:
        raise CliError(str(err)) from None
    labels = labels or list(corpus.labels)
    if seq_len > model.cfg.max_position_embeddings - 1:
        raise CliError(f"--seq-len {seq_len} exceeds the model's context ({model.cfg.max_position_embeddings} - 1)")
    sets = [U.EvalSet(label, U.token_windows(corpus, label, split, tokens_per_label, seq_len),
                      U.common_tokens(corpus, label, 0), U.bytes_per_predicted_token(corpus, label, split))
            for label in labels]
    bos = getattr(model.cfg, "bos_token_id", None)
    before = U.evaluate_sets(model, sets, batch_size=batch_size, bos_token_id=bos)
    with model.edit_experts(edits):
        after = U.evaluate_sets(model, sets, batch_size=batch_size, bos_token_id=bos)
    table = pd.DataFrame({"tokens": before["tokens"]})
    for col in ("loss", "bpb", "top1"):
        table[f"{col}_before"] = before[col]
        table[f"{col}_after"] = after[col]
        table[f"delta_{col}"] = after[col] - before[col]
    return table


def run_edit_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from monet_interp import HookedMONET
    from monet_interp.analyses.cli.common import CliError
    from monet_interp.editing import EditSet, check_edits

    if not args.prompt and not args.corpus:
        raise CliError("nothing to measure: give --prompt TEXT (repeatable) and/or --corpus DIR")
    if args.max_new_tokens < 0:
        raise CliError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    path = Path(args.edits)
    if not path.is_file():
        raise CliError(f"edit file {path} does not exist")
    edits = EditSet.from_json(path)
    if not len(edits):
        raise CliError(f"{path} holds no edits")
    model = HookedMONET.from_pretrained(args.model)
    check_edits(edits, model.cfg)  # EditError (a ValueError) names the bad edit
    print(f"{args.model}: {describe_edits(edits)}")
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if args.prompt:
        rows = prompt_effects(model, edits, args.prompt, args.max_new_tokens, args.sample, args.seed)
        for row in rows:
            print(f"\nprompt {row['prompt']!r} ({row['tokens']} tokens): loss {row['loss_before']:.4f} -> "
                  f"{row['loss_after']:.4f} nats/token ({row['delta_loss']:+.4f})")
            if args.max_new_tokens:
                print(f"  before: {row['generation_before']!r}\n  after:  {row['generation_after']!r}")
        if out:
            pd.DataFrame(rows).to_csv(out / "prompts.csv", index=False)
    if args.corpus:
        table = corpus_effects(model, edits, args.corpus, args.labels, args.split, args.tokens_per_label,
                               args.seq_len, args.batch_size)
        cols = ["tokens", "loss_before", "loss_after", "delta_loss", "delta_bpb", "top1_before", "delta_top1"]
        with pd.option_context("display.width", 200):
            print(f"\nheld-out effect ({args.split} split; loss nats/token, top-1 percent):")
            print(table[cols].round(4).to_string())
        if out:
            table.to_csv(out / "edit_effect.csv")
    if out:
        (out / "edits.json").write_text(json.dumps(edits.to_dict(), indent=1))
        print(f"wrote {out}")
    return 0


__all__ = ["corpus_effects", "describe_edits", "prompt_effects", "register", "run_edit_command"]
