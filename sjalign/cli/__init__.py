"""The command line: thin wiring over the library."""
