import sys

from pixelrpc.cli import main

sys.exit(main())
