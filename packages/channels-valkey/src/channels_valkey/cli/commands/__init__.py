"""One module per ``channels-valkey`` sub-command.

Each module has ``register(commands)``: it adds its sub-parser to the ``add_subparsers()`` object and sets the
``run`` default to a function that takes the parsed arguments and returns the exit status.
"""
