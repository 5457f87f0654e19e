"""``python -m monet_interp.training ARGS``: the ``monet-interp train`` command."""

from monet_interp.training.cli_args import main

raise SystemExit(main())
