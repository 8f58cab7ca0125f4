"""Subcommands of the ``stardist-hier`` command line (one module each)."""
