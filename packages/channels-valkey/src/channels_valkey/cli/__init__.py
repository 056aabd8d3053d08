"""The ``channels-valkey`` command line tool, shipped by the meta-package."""
