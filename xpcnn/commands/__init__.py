"""Sub-commands of the ``xpcnn`` CLI, one module each (see :mod:`xpcnn.cli`)."""
