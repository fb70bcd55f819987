"""The use cases (no HTTP): one request's options, media, engine and answer; the runtime that wires them."""
