"""torchrun entry point: routing statistics of a checkpoint over a corpus, data-parallel.

Command line (one process per device; rank 0 writes the result)::

    torchrun --nproc_per_node 2 -m monet_interp.stats.distributed \\
        --model monet-vd-tiny --corpus data/corpus --split val --out runs/routing_stats

Every statistics function in ``monet_interp.stats`` notices an initialised process group by
itself (:mod:`monet_interp.stats.collectives`); this module only starts one and saves the result.
Nothing imports it, so ``python -m`` runs it without a second copy in ``sys.modules``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from monet_interp.stats.collectives import init_from_env, rank_world


def main(argv: list[str] | None = None) -> int:
    """torchrun entry point: routing statistics of a checkpoint over a corpus, saved by rank 0."""
    parser = argparse.ArgumentParser(prog="python -m monet_interp.stats.distributed", description=main.__doc__)
    parser.add_argument("--model", required=True, help="checkpoint name or folder (HookedMONET.from_pretrained)")
    parser.add_argument("--corpus", required=True, help="corpus directory (monet_interp.data.Corpus)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--labels", nargs="*", default=None)
    parser.add_argument("--max-tokens-per-label", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--fire-threshold", type=float, default=0.01)
    parser.add_argument("--doc-max", action="store_true")
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)

    from monet_interp.data import open_corpus
    from monet_interp.model import HookedMONET
    from monet_interp.stats import compute_routing_stats

    distributed = "WORLD_SIZE" in os.environ
    device = init_from_env() if distributed else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = HookedMONET.from_pretrained(args.model, device=device, dtype=dtype)
    corpus = open_corpus(args.corpus)
    stats = compute_routing_stats(model, corpus, split=args.split, labels=args.labels,
                                  max_tokens_per_label=args.max_tokens_per_label, seq_len=args.seq_len,
                                  batch_size=args.batch_size, top_k=args.top_k, fire_threshold=args.fire_threshold,
                                  doc_max=args.doc_max)
    if rank_world()[0] == 0:
        stats.save(args.out)
        print(f"saved routing statistics of {stats.total_tokens} tokens to {args.out}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
