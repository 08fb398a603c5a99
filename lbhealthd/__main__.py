"""`python -m lbhealthd` is the same as the `lbhealthd` command."""

import sys

from lbhealthd.cli import main

sys.exit(main())
