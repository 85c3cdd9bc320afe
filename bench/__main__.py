"""`python -m bench`: see bench.main."""

import sys

from bench.main import main

sys.exit(main())
