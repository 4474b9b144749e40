"""The `orchestrate` command line: a thin edge over the library."""
