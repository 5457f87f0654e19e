"""``python -m monet_interp.training ARGS``: the ``monet-interp train`` command."""

from monet_interp.training.trainer import main

raise SystemExit(main())
