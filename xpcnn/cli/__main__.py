"""``python -m xpcnn.cli``: the ``xpcnn`` command (``xpcnn train --workers N`` starts its ranks this way)."""
from . import entry

entry()
