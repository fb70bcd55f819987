"""How many requests the server works on at once (MAX_CONCURRENT_REQUESTS), across every model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from embedding_api.errors import ApiError, ErrorKind


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """One request in progress; past the limit the caller is told to retry at once.

        Entered before the request's body is read, so refused requests cost neither memory nor parsing.
        """
        if self.in_progress >= self.limit:
            raise ApiError(ErrorKind.OVERLOADED, "the server is busy: too many requests in progress, retry shortly")
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1
