"""``monet-interp report``: the main job, one HTML report (statistics, monosemanticity, expert
pages, unlearning, steering) on a MONET model over a labelled corpus
(:func:`monet_interp.analyses.report.main.run_report`)."""

from __future__ import annotations

import argparse
from typing import Any

from monet_interp.analyses.cli.common import positive_int
from monet_interp.analyses.report.main import REPORT_SECTIONS, ReportConfig, run_report


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report", help="the main job: statistics, monosemanticity, expert pages, "
                                                  "unlearning and steering in one HTML report")
    defaults = ReportConfig()
    parser.add_argument("--model", default=defaults.model, help="embedded name, checkpoint folder or hub id")
    parser.add_argument("--corpus", default=defaults.corpus, help="corpus folder (built if missing)")
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--dense", default=defaults.dense, help="dense baseline ('' to skip)")
    parser.add_argument("--top1", default=defaults.top1, help="top-1 MONET ('' to skip)")
    parser.add_argument("--sections", default=",".join(REPORT_SECTIONS),
                        help=f"comma list of {','.join(REPORT_SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="small settings for a smoke run")
    parser.add_argument("--threads", type=positive_int, default=defaults.threads,
                        help=f"torch CPU threads (default {defaults.threads}: fastest for small models)")
    parser.add_argument("--no-progress", action="store_true")

    def run(args: argparse.Namespace) -> int:
        sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        bad = [s for s in sections if s not in REPORT_SECTIONS]
        if bad:
            parser.error(f"unknown sections {bad}; choose from {', '.join(REPORT_SECTIONS)}")
        make = ReportConfig.quick if args.quick else ReportConfig
        cfg = make(model=args.model, corpus=args.corpus, out=args.out, dense=args.dense or None,
                   top1=args.top1 or None, sections=sections, threads=args.threads, progress=not args.no_progress)
        run_report(cfg)
        return 0

    parser.set_defaults(func=run)
    return parser


__all__ = ["register"]
