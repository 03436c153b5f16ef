import sys

from pixelrpc.clients.cli import main

sys.exit(main())
