"""`uvicorn embedding_api.main:app`"""

import logging

from embedding_api import environment

environment.apply_process_variables()  # before the imports below bring in torch and huggingface_hub
for _warning in environment.unknown_key_warnings():
    logging.getLogger("embedding_api.main").warning(_warning)

from embedding_api.cli import exit_on_fatal  # noqa: E402
from embedding_api.http.app import create_app  # noqa: E402

app = create_app(on_fatal=exit_on_fatal)
