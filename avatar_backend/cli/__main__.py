"""``python -m avatar_backend.cli``: the ``avatar-backend`` command."""

import sys

from . import main

sys.exit(main())
