"""Subcommands of the ``napari-diffmed`` command line (one module each)."""
