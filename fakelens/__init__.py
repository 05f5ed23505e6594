"""The `fakelens` command line's composition root: the one package that may reach every other.

`training`, `service` and `models` never import it (the import contract in pyproject.toml,
checked by `make test`, says so); it imports each package's subcommand module lazily.
"""
