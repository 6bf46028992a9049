"""Python client for Reckon, the online charging server.

- ``Client``: asyncio, pipelined, with BATCH, timeouts and reconnect; its
  ``alerts()`` streams the spend-control alerts the server pushes;
- ``SyncClient``: the same calls, blocking;
- ``wire``: the native protocol (protocol/SPEC.md) message by message;
- ``errors``: one exception class per Reckon code (``CreditLimitReached``,
  ``AccountNotFound``, ``Forbidden``, ...);
- ``reckon_client.litellm``: a LiteLLM proxy hook that reserves through Reckon.

Money and quantities are ``decimal.Decimal`` (or ``int``), never floats.
"""

from . import errors, wire
from .client import AlertStream, Client, new_op_id
from .codes import AdminCode, ErrorCode, ResultCode
from .errors import *  # noqa: F401,F403  (the generated per-code classes)
from .errors import (AdminError, ConnectionLost, CreditControlError, ProtocolViolation,
                     ReckonError, RequestTimeout, ServerError)
from .sync import SyncClient

__version__ = "0.1.0"

__all__ = ["Client", "AlertStream", "SyncClient", "wire", "errors", "new_op_id", "ResultCode", "AdminCode",
           "ErrorCode", "ReckonError", "ConnectionLost", "RequestTimeout", "ProtocolViolation",
           "ServerError", "CreditControlError", "AdminError"] + errors.__all__
