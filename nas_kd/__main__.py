"""``python -m nas_kd`` is the search."""

import sys

from nas_kd.search.cli import main

sys.exit(main())
