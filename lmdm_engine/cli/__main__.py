"""``python -m lmdm_engine.cli``: the ``lmdm`` command."""

import sys

from . import main

sys.exit(main())
