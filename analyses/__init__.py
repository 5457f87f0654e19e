"""Analyses (installed as monet_interp.analyses)."""
