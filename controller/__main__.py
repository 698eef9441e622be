"""``python -m controller`` is the ``nas`` command."""

import sys

from controller.cli import main

sys.exit(main())
