"""Entry point of `runyard server`."""

from __future__ import annotations

import asyncio

from runyard.server.bootstrap import serve
from runyard.server.config import ServerConfig
from runyard.server.logs import configure_logging


def run_server(config: ServerConfig) -> None:
    configure_logging()
    asyncio.run(serve(config))
