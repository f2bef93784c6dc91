"""``python -m nas_kd`` is the search."""

import sys

from nas_kd.search import main

sys.exit(main())
