"""``python -m millimetric_nb.cli``: the ``millimetric-nb`` command."""

import sys

from . import main

sys.exit(main())
