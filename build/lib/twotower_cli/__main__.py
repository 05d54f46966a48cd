"""`python -m twotower_cli <stage> ...`: the same front door as the `twotower` script, for
launchers that start a module (`torchrun ... -m twotower_cli train ...`)."""

from twotower_cli.cli import main

if __name__ == "__main__":  # spawned workers import this module again under another name
    main()
