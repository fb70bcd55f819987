import sys

from embedding_api.cli import main

sys.exit(main(sys.argv[1:]))
