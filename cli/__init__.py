"""qnext.cli: typer apps — `qnext` (cli.main) and `qnext-admin` (cli.admin)."""
