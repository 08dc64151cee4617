"""The Runyard Python SDK and the `runyard` command line.

from runyard.client import Client
with Client("127.0.0.1:50051") as client:
    experiment = client.submit("manifest.yaml")
"""

from runyard.client.errors import ApiError, ClientError, CodeTooLarge, ServerUnreachable
from runyard.client.packing import pack_code
from runyard.client.sdk import Client

__all__ = ["ApiError", "Client", "ClientError", "CodeTooLarge", "ServerUnreachable", "pack_code"]
