import sys

from recgoat_dist.cli import main

sys.exit(main())
