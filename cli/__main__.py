"""``python -m weldstream.cli``: the same as the ``weldstream`` command."""

import sys

from weldstream.cli import main

sys.exit(main())
