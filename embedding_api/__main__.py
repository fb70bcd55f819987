import sys

from embedding_api.cli import serve

sys.exit(serve(sys.argv[1:]))
