"""`uvicorn embedding_api.main:app`: the same app `python -m embedding_api` serves, with the same logging."""

import logging

from embedding_api import environment

environment.apply_process_variables()  # before the imports below bring in torch and huggingface_hub

from embedding_api.cli import exit_on_fatal  # noqa: E402
from embedding_api.http.app import create_app  # noqa: E402
from embedding_api.observability.logs import configure_logging  # noqa: E402
from embedding_api.settings import Settings  # noqa: E402

_settings = Settings()
configure_logging(_settings.log_level, _settings.log_format)
for _warning in environment.unknown_key_warnings():
    logging.getLogger("embedding_api.main").warning(_warning)

app = create_app(_settings, on_fatal=exit_on_fatal)
