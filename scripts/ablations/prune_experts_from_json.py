"""Prune (or otherwise edit) an expert list read from a JSON edit file, and report the effect.

The file is an EditSet (``EditSet(edits).to_json(path)``) or a bare JSON list of edits, e.g.
    [{"i": 3, "j": 7, "op": "prune", "group": 0}, {"i": 5, "j": 1, "op": "scale", "value": 0.5, "layer": 2}]

    python scripts/ablations/prune_experts_from_json.py edits.json --text "def main():"
"""

import argparse

import torch

from monet_interp import HookedMONET
from monet_interp.editing import EditSet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("edits", help="JSON edit file")
    parser.add_argument("--model", default="monet-vd-tiny")
    parser.add_argument("--text", default="def main():\n    print('hello world')\n")
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()

    model = HookedMONET.from_pretrained(args.model)
    edits = EditSet.from_json(args.edits)  # validated against the model when applied
    tokens = model.to_tokens(args.text)
    with torch.no_grad():
        clean = model(tokens, return_type="loss").item()
        before = model.generate(args.text, max_new_tokens=args.new_tokens, do_sample=False)
        with model.edit_experts(edits):
            edited = model(tokens, return_type="loss").item()
            after = model.generate(args.text, max_new_tokens=args.new_tokens, do_sample=False)
    print(f"{len(edits)} edits; loss {clean:.4f} -> {edited:.4f} nats ({edited - clean:+.4f})")
    print("before:", repr(before))
    print("after: ", repr(after))


if __name__ == "__main__":
    main()
