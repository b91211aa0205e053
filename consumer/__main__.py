"""`python -m consumer`: see consumer/cli.py."""

from consumer.cli import cli

if __name__ == "__main__":
    cli()
