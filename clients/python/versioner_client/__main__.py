"""`python -m versioner_client`: the `versioner` CLI without the console script."""

import sys

from versioner_client.cli import main

sys.exit(main())
