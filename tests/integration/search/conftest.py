"""The scheduling tests' live stack (PostgreSQL, a private NATS, file storage, agents with declared GPUs)."""

from tests.integration.scheduling.conftest import stack

__all__ = ["stack"]
