"""The `nps-dispatch` command line."""
