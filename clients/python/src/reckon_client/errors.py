"""Typed errors: one class per Reckon code, each naming the SPEC's code.

Three families, as the protocol has three code tables (SPEC 9):

- ``CreditControlError`` for a CCA whose result is not SUCCESS
  (``CreditLimitReached``, ``UserUnknown``, ...), with ``.result_code``;
- ``AdminError`` for an ADMIN_RESULT that is not OK (``AccountExists``,
  ``InsufficientFunds``, ...), with ``.code``;
- ``ServerError`` for an ERROR frame (``Forbidden``, ``Busy``,
  ``AuthFailed``, ...), with ``.code``.

``ConnectionLost`` and ``RequestTimeout`` mean the outcome is unknown: resend
the same request (same op id, or same session id and request number) and the
server applies it at most once.
"""

from __future__ import annotations

from typing import Any, Optional

from .codes import AdminCode, ErrorCode, ResultCode, admin_name, error_name, result_name


class ReckonError(Exception):
    """Base of every error this package raises."""


class ConnectionLost(ReckonError, ConnectionError):
    """The connection dropped or could not be opened; a request in flight may or may not
    have been applied (resend it unchanged)."""


class RequestTimeout(ReckonError, TimeoutError):
    """No answer within the call's timeout; the request may or may not have been applied."""


class ProtocolViolation(ReckonError):
    """The server sent bytes this client cannot decode (a bug or a version mismatch);
    the connection is closed."""


class ServerError(ReckonError):
    """An ERROR frame (SPEC 6.7): the request failed at the protocol level."""

    code_class: Optional[ErrorCode] = None

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        self.code_name = error_name(code)
        self.message = message
        super().__init__(f"{self.code_name} ({code}): {message}" if message else
                         f"{self.code_name} ({code})")


class CreditControlError(ReckonError):
    """A CCA whose result code is not SUCCESS (SPEC 9.1); ``cca`` is the whole answer."""

    code_class: Optional[ResultCode] = None

    def __init__(self, result_code: int, cca: Any = None, service_id: Optional[int] = None) -> None:
        self.result_code = result_code
        self.code_name = result_name(result_code)
        self.cca = cca
        self.service_id = service_id
        where = f" for service {service_id}" if service_id is not None else ""
        super().__init__(f"{self.code_name} ({result_code}){where}")

    @property
    def retryable(self) -> bool:
        """Whether SPEC 9.1 says to retry later (3xxx and 4xxx codes)."""
        return self.result_code // 1000 in (3, 4)

    @property
    def denial(self) -> Any:
        """Which control refused (protocol version 3, a ``wire.Denial``): that of the
        service the error is about, else the first one the CCA's services carry; None."""
        services = getattr(self.cca, "services", None) or []
        if self.service_id is not None:
            services = [s for s in services if s.service_id == self.service_id]
        return next((s.denial for s in services if getattr(s, "denial", None)), None)


class AdminError(ReckonError):
    """An ADMIN_RESULT (or RATECARD_RESULT) whose code is not OK (SPEC 9.2)."""

    code_class: Optional[AdminCode] = None

    def __init__(self, code: int, result: Any = None, message: str = "") -> None:
        self.code = code
        self.code_name = admin_name(code)
        self.result = result
        self.message = message
        text = f"{self.code_name} ({code})"
        super().__init__(f"{text}: {message}" if message else text)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.lower().split("_"))


_BY_ERROR: dict[int, type] = {}
_BY_RESULT: dict[int, type] = {}
_BY_ADMIN: dict[int, type] = {}
__all__ = ["ReckonError", "ConnectionLost", "RequestTimeout", "ProtocolViolation", "ServerError",
           "CreditControlError", "AdminError", "server_error", "credit_control_error",
           "admin_error"]

for _enum, _base, _table in ((ErrorCode, ServerError, _BY_ERROR),
                             (ResultCode, CreditControlError, _BY_RESULT),
                             (AdminCode, AdminError, _BY_ADMIN)):
    for _member in _enum:
        if _member.name in ("SUCCESS", "OK"):
            continue
        _cls = type(_camel(_member.name), (_base,),
                    {"code_class": _member, "__doc__": f"{_member.name} ({_member.value})."})
        _cls.__module__ = __name__
        globals()[_cls.__name__] = _cls
        _table[_member.value] = _cls
        __all__.append(_cls.__name__)


def server_error(code: int, message: str = "") -> ServerError:
    """The ServerError subclass for an ERROR code (unknown codes: the base class)."""
    return _BY_ERROR.get(code, ServerError)(code, message)


def credit_control_error(code: int, cca: Any = None,
                         service_id: Optional[int] = None) -> CreditControlError:
    """The CreditControlError subclass for a result code."""
    return _BY_RESULT.get(code, CreditControlError)(code, cca, service_id)


def admin_error(code: int, result: Any = None, message: str = "") -> AdminError:
    """The AdminError subclass for an admin code."""
    return _BY_ADMIN.get(code, AdminError)(code, result, message)
