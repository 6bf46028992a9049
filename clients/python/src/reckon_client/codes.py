"""Reckon's code tables (protocol/SPEC.md section 9), with the SPEC's names."""

from __future__ import annotations

import enum


class ResultCode(enum.IntEnum):
    """Credit-control result codes (SPEC 9.1), Diameter's values."""

    SUCCESS = 2001
    TOO_BUSY = 3004
    END_USER_SERVICE_DENIED = 4010
    CREDIT_CONTROL_NOT_APPLICABLE = 4011
    CREDIT_LIMIT_REACHED = 4012
    UNKNOWN_SESSION_ID = 5002
    AUTHORIZATION_REJECTED = 5003
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    UNABLE_TO_COMPLY = 5012
    USER_UNKNOWN = 5030
    RATING_FAILED = 5031
    REQUEST_ID_REUSED = 5040
    REQUEST_TOO_OLD = 5041
    REFUND_NOT_COVERED = 5042


class AdminCode(enum.IntEnum):
    """Admin result codes (SPEC 9.2)."""

    OK = 0
    INVALID_OP_ID = 1
    OP_ID_REUSED = 2
    ACCOUNT_EXISTS = 3
    ACCOUNT_NOT_FOUND = 4
    ACCOUNT_NOT_ACTIVE = 5
    HIERARCHY_TOO_DEEP = 6
    TOO_MANY_BUCKETS = 7
    BUCKET_NOT_FOUND = 8
    UNIT_MISMATCH = 9
    INSUFFICIENT_FUNDS = 10
    LIMIT_EXCEEDED = 11
    BALANCE_OVERFLOW = 12
    AMOUNT_TOO_PRECISE = 13
    AMOUNT_OUT_OF_RANGE = 14
    INVALID_INPUT = 100
    AMOUNT_NOT_POSITIVE = 101
    MIN_AMOUNT = 102
    EXPIRY_NOT_AFTER_NOW = 103
    VALIDITY_WINDOW = 104
    AMOUNT_NEGATIVE = 105
    CREDIT_LIMIT_NEGATIVE = 106
    TOO_MANY_SERVICES = 107
    REASON_TOO_LONG = 108
    DELTA_ZERO = 109
    USED_NEGATIVE = 110
    CAP_NEGATIVE = 111
    OWN_PARENT = 112
    CLOSING_IS_FINAL = 113
    WINDOW_TOO_LONG = 114
    SWEEP_OP_ID = 115
    CLOSE_WITH_OPEN_RESERVATIONS = 116


class ErrorCode(enum.IntEnum):
    """Protocol error codes carried by ERROR frames (SPEC 9.3)."""

    MALFORMED_FRAME = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_KIND = 3
    UNSUPPORTED_VERSION = 4
    NOT_AUTHENTICATED = 5
    AUTH_FAILED = 6
    FORBIDDEN = 7
    BUSY = 8
    BATCH_TOO_LARGE = 9
    INTERNAL = 10
    SHUTTING_DOWN = 11
    UNEXPECTED_KIND = 12


def result_name(code: int) -> str:
    """The SPEC name of a credit-control code, or its class for unknown ones (SPEC 9.1)."""
    try:
        return ResultCode(code).name
    except ValueError:
        klass = {2: "SUCCESS", 3: "TOO_BUSY", 4: "TRANSIENT_FAILURE", 5: "PERMANENT_FAILURE"}
        return f"UNKNOWN_{code}({klass.get(code // 1000, 'PERMANENT_FAILURE')})"


def admin_name(code: int) -> str:
    """The SPEC name of an admin code, or UNKNOWN_<n> (a failure that changed nothing)."""
    try:
        return AdminCode(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


def error_name(code: int) -> str:
    """The SPEC name of a protocol error code; unknown codes are treated as INTERNAL."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_{code}(INTERNAL)"


def result_class(code: int) -> int:
    """How a client treats a credit-control code: its thousands digit (2..5) per SPEC 9.1."""
    if code in (c.value for c in ResultCode):
        return code // 1000
    digit = code // 1000
    return digit if digit in (2, 3, 4) else 5
