"""`uvicorn embedding_api.main:app`"""

from embedding_api.app import create_app
from embedding_api.cli import exit_on_fatal

app = create_app(on_fatal=exit_on_fatal)
