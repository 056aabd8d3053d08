"""``python -m channels_valkey.cli``: the same as the ``channels-valkey`` command."""

import sys

from channels_valkey.cli.main import main

sys.exit(main())
