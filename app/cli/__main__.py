"""``python -m app.cli``: the ``ragops`` command."""

import sys

from app.cli import main

sys.exit(main())
