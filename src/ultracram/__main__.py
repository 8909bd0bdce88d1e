import sys

from ultracram.cli import main

sys.exit(main())
