import sys

from planshift.cli import main

sys.exit(main())
