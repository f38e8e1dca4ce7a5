"""Local stack, configuration and the `streamrec` command line."""
