"""`python -m vlmedge` runs the `vlmedge` command."""
import sys

from vlmedge.cli import main

if __name__ == "__main__":
    sys.exit(main())
