"""``python -m avatar_backend.worker``: the generator worker process (see main.py)."""

import sys

from .main import main

sys.exit(main())
