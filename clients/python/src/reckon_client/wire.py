"""Reckon's native protocol, versions 1 to 3, byte for byte as protocol/SPEC.md states it.

Every message is a dataclass; its wire layout is its ``_schema`` (field name,
wire type), in wire order, so encoding and decoding are one generic walk over
the schema and cannot drift apart. Decoding checks every length and count
before it reads or allocates, every enumeration, boolean, unit and decimal,
and that a body is used to its last byte (SPEC 3.1); encoding refuses what a
decoder would refuse (SPEC 13). A schema entry may name the version that added
the field: on an older connection it is not on the wire (SPEC 5.1).
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Optional

from .codes import ErrorCode

# SPEC section 10.
LENGTH_PREFIX_LEN = 4
HEADER_LEN = 10
DEFAULT_MAX_FRAME = 1 << 20
MAX_FRAME_CAP = 16 << 20
MIN_NEGOTIATED_MAX_FRAME = 64 << 10
PRE_AUTH_MAX_FRAME = 4096
CREDENTIAL_MAX = 256
CLIENT_NAME_MAX = 64
SERVER_NAME_MAX = 64
SESSION_ID_MAX = 128
REDIRECT_MAX = 256
REASON_MAX = 256
ERROR_MESSAGE_MAX = 1024
UNIT_LEN_MAX = 16
DECIMAL_SCALE_MAX = 28
DECIMAL_MANTISSA_MAX = (1 << 96) - 1
BATCH_MAX = 1024
SERVICES_MAX = 32
UNIT_AMOUNTS_MAX = 8
BALANCE_ENTRIES_MAX = 32
BUCKET_SERVICES_MAX = 32
BUCKETS_MAX = 1024
RESERVATIONS_MAX = 4096
RATECARD_NAME_MAX = 256
RATECARD_TEXT_MAX = 60_000
RATECARD_ID_MAX = 64
RATECARD_MESSAGE_MAX = 8192
RATECARDS_MAX = 64
RATECARD_VERSIONS_MAX = 1024
NEVER = (1 << 64) - 1
"""The timestamp meaning "never" (``u64::MAX``)."""

PROTOCOL_VERSION = 3
"""The highest protocol version this package speaks: 2 is 1 plus ``Ccr.attributes``; 3 is 2
plus spend-control periods, soft caps and alert thresholds (``LimitSet.period`` / ``soft`` /
``alerts``), ``Balance.limits``, ``ServiceAnswer.denial`` and alerts pushed to subscribers
(``AlertSubscribe``, ``AlertSubscribed``, ``Alert``; SPEC 5.1, 6.11)."""
PROTOCOL_VERSION_MIN = 1
"""The lowest protocol version this package speaks."""
ATTRIBUTES_MAX = 8
ATTRIBUTE_KEY_MAX = 32
ATTRIBUTE_VALUE_MAX = 64
LIMITS_MAX = 64
PERIOD_MONTHS_MAX = 12
PERIOD_KIND_FIXED = 13
PERIOD_OFFSET_MIN_MAX = 1080
PERIOD_LENGTH_MIN_MS = 60_000
PERIOD_LENGTH_MAX_MS = 3653 * 86_400_000
ALERT_THRESHOLDS_MAX = 8
ALERT_PCT_MAX = 250
ALERTS_KEPT = 4096
"""Alerts a server keeps, the newest, for subscribers that resume (SPEC 6.11)."""
ALERT_QUEUE_MAX = 1024
"""Most alerts a server holds unwritten for one connection before it closes it (SPEC 6.11)."""

_UNIT_RE = re.compile(r"[A-Za-z0-9_]{1,16}\Z")


class WireError(Exception):
    """Malformed input: carries the SPEC error code, the frame's request id when
    known, whether the connection must close (SPEC 3.2), and how many bytes to
    skip to reach the next frame when it need not."""

    def __init__(self, code: ErrorCode, message: str, request_id: int = 0,
                 fatal: bool = False, skip: int = 0) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.detail = message
        self.request_id = request_id
        self.fatal = fatal
        self.skip = skip


class EncodeError(ValueError):
    """A value the protocol cannot carry (over a limit, out of range, bad unit):
    refused before any byte is produced."""


class Kind(enum.IntEnum):
    """Frame kinds (SPEC 4)."""

    HELLO = 0x01
    PING = 0x02
    BATCH = 0x03
    CCR = 0x10
    ACCOUNT_CREATE = 0x20
    ACCOUNT_STATUS = 0x21
    TOPUP = 0x22
    ADJUST = 0x23
    BUCKET_GRANT = 0x24
    LIMIT_SET = 0x25
    BALANCE_QUERY = 0x26
    RESERVATION_LIST = 0x27
    RATECARD_APPLY = 0x28
    RATECARD_SHOW = 0x29
    STATUS = 0x2A
    BACKUP = 0x2B
    ALERT_SUBSCRIBE = 0x2C
    HELLO_OK = 0x81
    PONG = 0x82
    BATCH_RESULT = 0x83
    CCA = 0x90
    ADMIN_RESULT = 0xA0
    BALANCE = 0xA1
    RESERVATIONS = 0xA2
    RATECARD_RESULT = 0xA3
    RATECARDS = 0xA4
    STATUS_RESULT = 0xA5
    BACKUP_RESULT = 0xA6
    ALERT_SUBSCRIBED = 0xA7
    ALERT = 0xA8
    ERROR = 0xFF


class RequestType(enum.IntEnum):
    """CCR request types (SPEC 6.4)."""

    INITIAL = 1
    UPDATE = 2
    TERMINATE = 3
    EVENT = 4


class EventAction(enum.IntEnum):
    """CCR event actions; NONE for session requests (SPEC 6.4)."""

    NONE = 0
    DIRECT_DEBIT = 1
    REFUND = 2
    CHECK_BALANCE = 3
    PRICE_ENQUIRY = 4


class TerminationCause(enum.IntEnum):
    """Why a session ended (Diameter's values, SPEC 6.4)."""

    NONE = 0
    LOGOUT = 1
    SERVICE_NOT_PROVIDED = 2
    BAD_ANSWER = 3
    ADMINISTRATIVE = 4
    LINK_BROKEN = 5
    AUTH_EXPIRED = 6
    USER_MOVED = 7
    SESSION_TIMEOUT = 8


class FinalUnitAction(enum.IntEnum):
    """What to do when a final grant is used up (SPEC 6.4)."""

    NONE = 0
    TERMINATE = 1
    REDIRECT = 2
    RESTRICT_ACCESS = 3


class AccountStatus(enum.IntEnum):
    """Account status (SPEC 6.5)."""

    ACTIVE = 0
    SUSPENDED = 1
    CLOSED = 2


class CreditKind(enum.IntEnum):
    """TOPUP kind (SPEC 6.5)."""

    TOP_UP = 0
    REFUND = 1


class DenialReason(enum.IntEnum):
    """Why a CCA service was refused for lack of credit (version 3, SPEC 6.4)."""

    NO_CREDIT = 1
    SPEND_CONTROL = 2


# --------------------------------------------------------------------------
# Primitive wire types


class _Reader:
    """A cursor over one frame's body; running past the end is malformed."""

    __slots__ = ("buf", "pos", "end", "rid", "version")

    def __init__(self, buf: bytes, pos: int, end: int, rid: int, version: int = 1) -> None:
        self.buf, self.pos, self.end, self.rid = buf, pos, end, rid
        self.version = version

    def take(self, n: int, what: str) -> bytes:
        if self.end - self.pos < n:
            raise self.bad(f"{what} runs past the end of the body")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def bad(self, message: str, code: ErrorCode = ErrorCode.MALFORMED_FRAME) -> WireError:
        return WireError(code, message, self.rid)


class _Out(bytearray):
    """The bytes being written, and the connection's protocol version (which fields exist)."""

    version = 1


class _Type:
    """A wire type: how one field is written and read."""

    zero: Any = 0
    """The value written for an absent optional (all-zero bytes)."""

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        raise NotImplementedError

    def decode(self, r: _Reader, name: str) -> Any:
        raise NotImplementedError


class _Int(_Type):
    def __init__(self, fmt: str, lo: int, hi: int) -> None:
        self.st = struct.Struct(fmt)
        self.lo, self.hi = lo, hi

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if not isinstance(v, int) or not self.lo <= v <= self.hi:
            raise EncodeError(f"{name}: {v!r} is not an integer in {self.lo}..={self.hi}")
        out += self.st.pack(v)

    def decode(self, r: _Reader, name: str) -> int:
        return self.st.unpack(r.take(self.st.size, name))[0]


class _U128(_Type):
    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if not isinstance(v, int) or not 0 <= v < 1 << 128:
            raise EncodeError(f"{name}: {v!r} is not a u128")
        out += v.to_bytes(16, "little")

    def decode(self, r: _Reader, name: str) -> int:
        return int.from_bytes(r.take(16, name), "little")


class _Bool(_Type):
    zero = False

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if not isinstance(v, bool):
            raise EncodeError(f"{name}: {v!r} is not a bool")
        out.append(1 if v else 0)

    def decode(self, r: _Reader, name: str) -> bool:
        b = r.take(1, name)[0]
        if b > 1:
            raise r.bad(f"{name}: boolean {b} is neither 0 nor 1")
        return b == 1


class _Str(_Type):
    zero = ""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if not isinstance(v, str):
            raise EncodeError(f"{name}: {v!r} is not a string")
        raw = v.encode("utf-8")
        if len(raw) > self.max_len:
            raise EncodeError(f"{name}: {len(raw)} bytes, above its limit of {self.max_len}")
        out += struct.pack("<H", len(raw))
        out += raw

    def decode(self, r: _Reader, name: str) -> str:
        (n,) = struct.unpack("<H", r.take(2, name))
        if n > self.max_len:
            raise r.bad(f"{name}: length {n} above its limit of {self.max_len}")
        raw = r.take(n, name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise r.bad(f"{name}: invalid UTF-8") from None


class _UnitT(_Str):
    def __init__(self) -> None:
        super().__init__(UNIT_LEN_MAX)

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if not isinstance(v, str) or not _UNIT_RE.match(v):
            raise EncodeError(f"{name}: {v!r} is not a unit (1 to 16 of A-Z a-z 0-9 _)")
        super().encode(out, v, name)

    def decode(self, r: _Reader, name: str) -> str:
        v = super().decode(r, name)
        if not _UNIT_RE.match(v):
            raise r.bad(f"{name}: {v!r} is not a unit name")
        return v


def decimal_parts(d: Decimal, name: str = "decimal") -> tuple[int, int]:
    """Mantissa and scale of an exact decimal as the wire carries it (SPEC 2.2)."""
    if not isinstance(d, Decimal):
        if isinstance(d, int) and not isinstance(d, bool):
            d = Decimal(d)
        else:
            raise EncodeError(f"{name}: {d!r} is not a Decimal or int (money is never a float)")
    if not d.is_finite():
        raise EncodeError(f"{name}: {d} is not a finite number")
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    mantissa = int("".join(map(str, digits)) or "0")
    if exponent > 0:
        mantissa *= 10 ** exponent
        exponent = 0
    scale = -exponent
    if scale > DECIMAL_SCALE_MAX:
        raise EncodeError(f"{name}: {d} has {scale} decimal places, above {DECIMAL_SCALE_MAX}")
    if mantissa > DECIMAL_MANTISSA_MAX:
        raise EncodeError(f"{name}: {d} is beyond the wire's 96-bit mantissa")
    return (-mantissa if sign and mantissa else mantissa), scale


def decimal_from_parts(mantissa: int, scale: int) -> Decimal:
    """The exact decimal mantissa / 10^scale, keeping the scale (2.50 stays 2.50)."""
    digits = tuple(int(c) for c in str(abs(mantissa)))
    return Decimal((1 if mantissa < 0 else 0, digits, -scale))


class _Dec(_Type):
    zero = Decimal(0)

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        m, s = decimal_parts(v, name)
        out += m.to_bytes(16, "little", signed=True)
        out.append(s)

    def decode(self, r: _Reader, name: str) -> Decimal:
        raw = r.take(17, name)
        m = int.from_bytes(raw[:16], "little", signed=True)
        s = raw[16]
        if s > DECIMAL_SCALE_MAX:
            raise r.bad(f"{name}: scale {s} above {DECIMAL_SCALE_MAX}")
        if abs(m) > DECIMAL_MANTISSA_MAX:
            raise r.bad(f"{name}: mantissa beyond 2^96 - 1")
        return decimal_from_parts(m, s)


class _Enum(_Type):
    def __init__(self, cls: type[enum.IntEnum]) -> None:
        self.cls = cls
        self.zero = cls(0) if 0 in cls._value2member_map_ else None

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        try:
            out.append(self.cls(v).value)
        except ValueError:
            raise EncodeError(f"{name}: {v!r} is not a {self.cls.__name__}") from None

    def decode(self, r: _Reader, name: str) -> enum.IntEnum:
        b = r.take(1, name)[0]
        try:
            return self.cls(b)
        except ValueError:
            raise r.bad(f"{name}: {b} is not a defined {self.cls.__name__}") from None


class _Opt(_Type):
    """Presence flag then the value's bytes, all zero when absent (SPEC 2.4)."""

    zero = None

    def __init__(self, inner: _Type) -> None:
        self.inner = inner

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        out.append(0 if v is None else 1)
        self.inner.encode(out, self.inner.zero if v is None else v, name)

    def decode(self, r: _Reader, name: str) -> Any:
        present = _BOOL.decode(r, f"has_{name}")
        start = r.pos
        v = self.inner.decode(r, name)
        if present:
            return v
        if any(r.buf[start:r.pos]):
            raise r.bad(f"{name}: absent but its bytes are not zero (non-canonical)")
        return None


class _List(_Type):
    """A count then that many items; the count is checked before any item is read."""

    def __init__(self, count: _Int, max_items: int, item: _Type, min_item: int,
                 too_many: ErrorCode = ErrorCode.MALFORMED_FRAME) -> None:
        self.count, self.max_items, self.item = count, max_items, item
        self.min_item, self.too_many = min_item, too_many
        self.zero = []

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        items = list(v)
        if len(items) > self.max_items:
            raise EncodeError(f"{name}: {len(items)} items, above its limit of {self.max_items}")
        self.count.encode(out, len(items), name)
        for i, item in enumerate(items):
            self.item.encode(out, item, f"{name}[{i}]")

    def decode(self, r: _Reader, name: str) -> list:
        n = self.count.decode(r, f"{name} count")
        if n > self.max_items:
            raise r.bad(f"{name}: count {n} above its limit of {self.max_items}", self.too_many)
        if n * self.min_item > r.end - r.pos:
            raise r.bad(f"{name}: {n} items cannot fit in the bytes left")
        return [self.item.decode(r, f"{name}[{i}]") for i in range(n)]


class _Pair(_Type):
    """A (unit, decimal) pair, as a Python ``(str, Decimal)`` tuple."""

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        try:
            unit, amount = v
        except (TypeError, ValueError):
            raise EncodeError(f"{name}: {v!r} is not a (unit, amount) pair") from None
        _UNIT.encode(out, unit, f"{name}.unit")
        _DEC.encode(out, amount, f"{name}.amount")

    def decode(self, r: _Reader, name: str) -> tuple[str, Decimal]:
        return (_UNIT.decode(r, f"{name}.unit"), _DEC.decode(r, f"{name}.amount"))


class _Attrs(_Type):
    """Version 2's CCR attributes: ``u8`` count, then (key, value) strings; keys 1..=32 bytes
    and distinct, values at most 64. Given as a list of pairs or a mapping, read as a list."""

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        items = list(v.items()) if isinstance(v, Mapping) else list(v)
        if len(items) > ATTRIBUTES_MAX:
            raise EncodeError(f"{name}: {len(items)} items, above its limit of {ATTRIBUTES_MAX}")
        _U8.encode(out, len(items), name)
        seen = set()
        for i, item in enumerate(items):
            try:
                key, value = item
            except (TypeError, ValueError):
                raise EncodeError(f"{name}[{i}]: {item!r} is not a (key, value) pair") from None
            if not isinstance(key, str) or not key or key in seen:
                raise EncodeError(f"{name}[{i}]: key {key!r} is empty, repeated or not a string")
            seen.add(key)
            _ATTR_KEY.encode(out, key, f"{name}[{i}].key")
            _ATTR_VALUE.encode(out, value, f"{name}[{i}].value")

    def decode(self, r: _Reader, name: str) -> list:
        n = _U8.decode(r, f"{name} count")
        if n > ATTRIBUTES_MAX:
            raise r.bad(f"{name}: count {n} above its limit of {ATTRIBUTES_MAX}")
        out, seen = [], set()
        for i in range(n):
            key = _ATTR_KEY.decode(r, f"{name}[{i}].key")
            value = _ATTR_VALUE.decode(r, f"{name}[{i}].value")
            if not key or key in seen:
                raise r.bad(f"{name}[{i}]: key {key!r} is empty or repeated")
            seen.add(key)
            out.append((key, value))
        return out


class _Rec(_Type):
    """A nested record: a dataclass with its own schema."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if not isinstance(v, self.cls):
            raise EncodeError(f"{name}: {v!r} is not a {self.cls.__name__}")
        _encode_fields(out, v)

    def decode(self, r: _Reader, name: str) -> Any:
        return _decode_fields(self.cls, r)


@dataclass(frozen=True)
class LimitPeriod:
    """When a spend control's count starts again (version 3, SPEC 6.5): ``kind`` 0 lifetime,
    1..=12 calendar periods of that many months in a local time ``offset_min`` minutes east of
    UTC, 13 fixed periods of ``length_ms``; ``anchor_ms`` is the start of one period. Build one
    with ``lifetime()``, ``months()`` or ``fixed()``. A lifetime period is falsy: it is what
    versions 1 and 2 carry."""

    kind: int = 0
    anchor_ms: int = 0
    offset_min: int = 0
    length_ms: int = 0

    @staticmethod
    def lifetime() -> "LimitPeriod":
        """Never resets."""
        return LimitPeriod()

    @staticmethod
    def months(months: int, anchor_ms: int, offset_min: int = 0) -> "LimitPeriod":
        """Calendar periods of ``months`` months (1 a month, 12 a year) from ``anchor_ms``."""
        return LimitPeriod(months, anchor_ms, offset_min)

    @staticmethod
    def fixed(anchor_ms: int, length_ms: int) -> "LimitPeriod":
        """Periods of ``length_ms`` from ``anchor_ms``."""
        return LimitPeriod(PERIOD_KIND_FIXED, anchor_ms, length_ms=length_ms)

    def __bool__(self) -> bool:
        return self.kind != 0

    def problem(self) -> Optional[str]:
        """What is out of range (None when the period is valid)."""
        if not isinstance(self.kind, int) or not 0 <= self.kind <= PERIOD_KIND_FIXED:
            return f"kind {self.kind!r} is not 0..=13"
        if self.kind == 0 and (self.anchor_ms or self.offset_min or self.length_ms):
            return "a lifetime period has no anchor, offset or length"
        if 1 <= self.kind <= PERIOD_MONTHS_MAX:
            if self.length_ms:
                return "a calendar period has no length_ms"
            if not isinstance(self.offset_min, int) or abs(self.offset_min) > PERIOD_OFFSET_MIN_MAX:
                return f"offset_min {self.offset_min!r} is not -1080..=1080"
        if self.kind == PERIOD_KIND_FIXED:
            if self.offset_min:
                return "a fixed period has no offset_min"
            if not isinstance(self.length_ms, int) or not (
                    PERIOD_LENGTH_MIN_MS <= self.length_ms <= PERIOD_LENGTH_MAX_MS):
                return f"length_ms {self.length_ms!r} is not {PERIOD_LENGTH_MIN_MS}..=" \
                       f"{PERIOD_LENGTH_MAX_MS}"
        return None


class _Period(_Type):
    """``u8 kind``, then ``u64 anchor_ms | i16 offset_min`` (1..=12) or ``u64 anchor_ms |
    u64 length_ms`` (13), nothing for 0 (SPEC 6.5)."""

    zero = LimitPeriod()

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if not isinstance(v, LimitPeriod):
            raise EncodeError(f"{name}: {v!r} is not a LimitPeriod")
        problem = v.problem()
        if problem:
            raise EncodeError(f"{name}: {problem}")
        out.append(v.kind)
        if v.kind:
            _U64.encode(out, v.anchor_ms, f"{name}.anchor_ms")
        if 1 <= v.kind <= PERIOD_MONTHS_MAX:
            _I16.encode(out, v.offset_min, f"{name}.offset_min")
        elif v.kind == PERIOD_KIND_FIXED:
            _U64.encode(out, v.length_ms, f"{name}.length_ms")

    def decode(self, r: _Reader, name: str) -> LimitPeriod:
        kind = r.take(1, f"{name} kind")[0]
        if kind > PERIOD_KIND_FIXED:
            raise r.bad(f"{name}: kind {kind} is not 0..=13")
        if kind == 0:
            return LimitPeriod()
        anchor = _U64.decode(r, f"{name}.anchor_ms")
        if kind == PERIOD_KIND_FIXED:
            period = LimitPeriod.fixed(anchor, _U64.decode(r, f"{name}.length_ms"))
        else:
            period = LimitPeriod.months(kind, anchor, _I16.decode(r, f"{name}.offset_min"))
        problem = period.problem()
        if problem:
            raise r.bad(f"{name}: {problem}")
        return period


@dataclass(frozen=True)
class Denial:
    """Which control refused a CCA service (version 3, SPEC 6.4): ``NO_CREDIT`` (a top-up
    helps), or ``SPEND_CONTROL`` with the ``account`` the control is set on and its
    ``period_kind`` (0 lifetime, 1..=12 months, 13 fixed)."""

    reason: DenialReason
    account: int = 0
    period_kind: int = 0

    @property
    def spend_control(self) -> bool:
        """True when a spend control (a budget or cap), not a lack of credit, refused."""
        return self.reason == DenialReason.SPEND_CONTROL


class _DenialT(_Type):
    """``u8 reason | u64 control_account | u8 control_period``; reason 0 (None) and 1 carry
    zeros (SPEC 6.4)."""

    zero = None

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        if v is None:
            out += bytes(10)
            return
        if not isinstance(v, Denial):
            raise EncodeError(f"{name}: {v!r} is not a Denial")
        try:
            reason = DenialReason(v.reason)
        except ValueError:
            raise EncodeError(f"{name}: reason {v.reason!r} is not a DenialReason") from None
        if reason == DenialReason.NO_CREDIT and (v.account or v.period_kind):
            raise EncodeError(f"{name}: NO_CREDIT carries no account or period")
        if not isinstance(v.period_kind, int) or not 0 <= v.period_kind <= PERIOD_KIND_FIXED:
            raise EncodeError(f"{name}: period_kind {v.period_kind!r} is not 0..=13")
        out.append(reason)
        _U64.encode(out, v.account, f"{name}.account")
        out.append(v.period_kind)

    def decode(self, r: _Reader, name: str) -> Optional[Denial]:
        reason = r.take(1, f"{name} reason")[0]
        if reason > DenialReason.SPEND_CONTROL:
            raise r.bad(f"{name}: reason {reason} is not a defined DenialReason")
        account = _U64.decode(r, f"{name}.account")
        period = r.take(1, f"{name}.period_kind")[0]
        if reason == DenialReason.SPEND_CONTROL:
            if period > PERIOD_KIND_FIXED:
                raise r.bad(f"{name}: period kind {period} is not 0..=13")
            return Denial(DenialReason.SPEND_CONTROL, account, period)
        if account or period:
            raise r.bad(f"{name}: account and period must be 0 unless the reason is "
                        "SPEND_CONTROL (non-canonical)")
        return Denial(DenialReason.NO_CREDIT) if reason else None


class _Thresholds(_Type):
    """Alert thresholds (version 3): ``u8`` count <= 8, then ``u8`` percents, each 1..=250 and
    strictly increasing (SPEC 6.5)."""

    def __init__(self) -> None:
        self.zero = []

    @staticmethod
    def problem(v: list) -> Optional[str]:
        if len(v) > ALERT_THRESHOLDS_MAX:
            return f"{len(v)} thresholds, above its limit of {ALERT_THRESHOLDS_MAX}"
        if any(not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= ALERT_PCT_MAX
               for p in v):
            return f"{v!r}: each threshold must be an int percent in 1..={ALERT_PCT_MAX}"
        if any(a >= b for a, b in zip(v, v[1:])):
            return f"{v!r}: thresholds must be strictly increasing"
        return None

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        items = list(v)
        problem = self.problem(items)
        if problem:
            raise EncodeError(f"{name}: {problem}")
        out.append(len(items))
        out += bytes(items)

    def decode(self, r: _Reader, name: str) -> list:
        n = r.take(1, f"{name} count")[0]
        if n > ALERT_THRESHOLDS_MAX:
            raise r.bad(f"{name}: count {n} above its limit of {ALERT_THRESHOLDS_MAX}")
        v = list(r.take(n, name))
        problem = self.problem(v)
        if problem:
            raise r.bad(f"{name}: {problem}")
        return v


class _Ranged(_Int):
    """An integer whose decoded value must be in ``lo..=hi`` too (refused as malformed)."""

    def decode(self, r: _Reader, name: str) -> int:
        v = super().decode(r, name)
        if not self.lo <= v <= self.hi:
            raise r.bad(f"{name}: {v} is not in {self.lo}..={self.hi}")
        return v


_U8 = _Int("<B", 0, 0xFF)
_U16 = _Int("<H", 0, 0xFFFF)
_U32 = _Int("<I", 0, 0xFFFFFFFF)
_U64 = _Int("<Q", 0, (1 << 64) - 1)
_I16 = _Int("<h", -(1 << 15), (1 << 15) - 1)
_U128T = _U128()
_BOOL = _Bool()
_DEC = _Dec()
_UNIT = _UnitT()
_PAIR = _Pair()
_PERIOD = _Period()
_THRESHOLDS = _Thresholds()
_ATTR_KEY = _Str(ATTRIBUTE_KEY_MAX)
_ATTR_VALUE = _Str(ATTRIBUTE_VALUE_MAX)


def _pairs(max_items: int) -> _List:
    return _List(_U8, max_items, _PAIR, 20)


_DROP = "drop"
"""Marks a schema field an older connection goes without (an answer's extra detail)."""


def _encode_fields(out: bytearray, obj: Any) -> None:
    # A schema entry may name the version that added it (SPEC 12): the field
    # does not exist on an older connection, so a value for it cannot be sent
    # (a request would mean something else), unless it is marked _DROP (an
    # answer's detail an older peer goes without).
    version = getattr(out, "version", 1)
    problem = getattr(obj, "_problem", None)
    if problem is not None and problem():
        raise EncodeError(f"{type(obj).__name__}: {problem()}")
    for name, t, *since in obj._schema:
        v = getattr(obj, name)
        if since and since[0] > version:
            if v and _DROP not in since:
                raise EncodeError(f"{name} needs protocol version {since[0]}; "
                                  f"the connection speaks {version}")
            continue
        t.encode(out, v, name)


def _decode_fields(cls: type, r: _Reader) -> Any:
    obj = cls(**{name: t.decode(r, name) for name, t, *since in cls._schema
                 if not since or since[0] <= r.version})
    # A rule across fields (SPEC: "other values are malformed").
    problem = getattr(obj, "_problem", None)
    if problem is not None and problem():
        raise r.bad(f"{cls.__name__}: {problem()}")
    return obj


# --------------------------------------------------------------------------
# Messages (SPEC 6). Units and amounts travel as lists of (unit, Decimal).

Amounts = list  # list[tuple[str, Decimal]]


@dataclass
class Hello:
    """HELLO: version range and credential (SPEC 6.1)."""

    min_version: int
    max_version: int
    credential: str
    client_name: str
    KIND: ClassVar[Kind] = Kind.HELLO
    _schema: ClassVar = [("min_version", _U16), ("max_version", _U16),
                         ("credential", _Str(CREDENTIAL_MAX)), ("client_name", _Str(CLIENT_NAME_MAX))]


class _MaxFrame(_Int):
    def __init__(self) -> None:
        super().__init__("<I", MIN_NEGOTIATED_MAX_FRAME, MAX_FRAME_CAP)

    def decode(self, r: _Reader, name: str) -> int:
        v = super().decode(r, name)
        if not MIN_NEGOTIATED_MAX_FRAME <= v <= MAX_FRAME_CAP:
            raise r.bad(f"{name}: {v} is outside {MIN_NEGOTIATED_MAX_FRAME}..={MAX_FRAME_CAP}")
        return v


@dataclass
class HelloOk:
    """HELLO_OK: the version spoken, the credential's organisation and role, limits (SPEC 6.1)."""

    version: int
    org_id: int
    is_admin: bool
    max_frame: int
    keepalive_s: int
    server_name: str
    KIND: ClassVar[Kind] = Kind.HELLO_OK
    _schema: ClassVar = [("version", _U16), ("org_id", _U64), ("is_admin", _BOOL),
                         ("max_frame", _MaxFrame()), ("keepalive_s", _U16),
                         ("server_name", _Str(SERVER_NAME_MAX))]


@dataclass
class Ping:
    """PING (SPEC 6.2)."""

    KIND: ClassVar[Kind] = Kind.PING
    _schema: ClassVar = []


@dataclass
class Pong:
    """PONG, echoing the PING's request id (SPEC 6.2)."""

    KIND: ClassVar[Kind] = Kind.PONG
    _schema: ClassVar = []


@dataclass
class ServiceRequest:
    """One service of a CCR: what is asked for and what was used (SPEC 6.4)."""

    service_id: int
    requested: Amounts = field(default_factory=list)
    used: Amounts = field(default_factory=list)
    _schema: ClassVar = [("service_id", _U32), ("requested", _pairs(UNIT_AMOUNTS_MAX)),
                         ("used", _pairs(UNIT_AMOUNTS_MAX))]


@dataclass
class Ccr:
    """CCR, a credit-control request (SPEC 6.4, semantics in 7)."""

    session_id: str
    request_type: RequestType
    request_number: int
    account: int
    event_action: EventAction = EventAction.NONE
    termination_cause: TerminationCause = TerminationCause.NONE
    timestamp_ms: int = 0
    services: list = field(default_factory=list)  # list[ServiceRequest]
    attributes: list = field(default_factory=list)  # [(key, value)] or a mapping; version 2
    KIND: ClassVar[Kind] = Kind.CCR
    _schema: ClassVar = [("session_id", _Str(SESSION_ID_MAX)), ("request_type", _Enum(RequestType)),
                         ("request_number", _U32), ("account", _U64),
                         ("event_action", _Enum(EventAction)),
                         ("termination_cause", _Enum(TerminationCause)),
                         ("timestamp_ms", _U64),
                         ("services", _List(_U8, SERVICES_MAX, _Rec(ServiceRequest), 6)),
                         ("attributes", _Attrs(), 2)]


@dataclass
class ServiceAnswer:
    """One service of a CCA: its result and grant (SPEC 6.4)."""

    service_id: int
    result_code: int
    granted: Amounts = field(default_factory=list)
    validity_time_s: int = 0
    final_unit_action: FinalUnitAction = FinalUnitAction.NONE
    redirect: str = ""
    denial: Optional[Denial] = None  # version 3: which control refused it; None before
    _schema: ClassVar = [("service_id", _U32), ("result_code", _U32),
                         ("granted", _pairs(UNIT_AMOUNTS_MAX)), ("validity_time_s", _U32),
                         ("final_unit_action", _Enum(FinalUnitAction)),
                         ("redirect", _Str(REDIRECT_MAX)), ("denial", _DenialT(), 3, _DROP)]

    def granted_of(self, unit: str) -> Decimal:
        """The amount granted in ``unit`` (0 when none)."""
        return sum((a for u, a in self.granted if u == unit), Decimal(0))


@dataclass
class Cca:
    """CCA, the answer to a CCR (SPEC 6.4)."""

    result_code: int
    session_id: str
    request_number: int
    services: list = field(default_factory=list)  # list[ServiceAnswer]
    balance: Amounts = field(default_factory=list)
    price: Amounts = field(default_factory=list)
    KIND: ClassVar[Kind] = Kind.CCA
    _schema: ClassVar = [("result_code", _U32), ("session_id", _Str(SESSION_ID_MAX)),
                         ("request_number", _U32),
                         ("services", _List(_U8, SERVICES_MAX, _Rec(ServiceAnswer), 16)),
                         ("balance", _pairs(BALANCE_ENTRIES_MAX)), ("price", _pairs(UNIT_AMOUNTS_MAX))]

    def service(self, service_id: int) -> Optional[ServiceAnswer]:
        """The answer for one service, if the CCA has it."""
        return next((s for s in self.services if s.service_id == service_id), None)


@dataclass
class AccountCreate:
    """ACCOUNT_CREATE (SPEC 6.5)."""

    op_id: int
    account: int
    parent: Optional[int] = None
    draws_on_parent: bool = False
    KIND: ClassVar[Kind] = Kind.ACCOUNT_CREATE
    _schema: ClassVar = [("op_id", _U128T), ("account", _U64), ("parent", _Opt(_U64)),
                         ("draws_on_parent", _BOOL)]


@dataclass
class AccountStatusChange:
    """ACCOUNT_STATUS (SPEC 6.5)."""

    op_id: int
    account: int
    status: AccountStatus
    KIND: ClassVar[Kind] = Kind.ACCOUNT_STATUS
    _schema: ClassVar = [("op_id", _U128T), ("account", _U64), ("status", _Enum(AccountStatus))]


@dataclass
class TopUp:
    """TOPUP (SPEC 6.5)."""

    op_id: int
    account: int
    unit: str
    amount: Decimal
    bucket: Optional[int] = None
    kind: CreditKind = CreditKind.TOP_UP
    reason: str = ""
    KIND: ClassVar[Kind] = Kind.TOPUP
    _schema: ClassVar = [("op_id", _U128T), ("account", _U64), ("unit", _UNIT), ("amount", _DEC),
                         ("bucket", _Opt(_U64)), ("kind", _Enum(CreditKind)),
                         ("reason", _Str(REASON_MAX))]


@dataclass
class Adjust:
    """ADJUST (SPEC 6.5)."""

    op_id: int
    account: int
    bucket: int
    delta: Decimal
    reason: str = ""
    KIND: ClassVar[Kind] = Kind.ADJUST
    _schema: ClassVar = [("op_id", _U128T), ("account", _U64), ("bucket", _U64), ("delta", _DEC),
                         ("reason", _Str(REASON_MAX))]


@dataclass
class BucketGrant:
    """BUCKET_GRANT (SPEC 6.5)."""

    op_id: int
    account: int
    unit: str
    amount: Decimal
    valid_from_ms: int = 0
    valid_until_ms: int = NEVER
    priority: int = 0
    credit_limit: Decimal = Decimal(0)
    services: list = field(default_factory=list)  # list[int]
    KIND: ClassVar[Kind] = Kind.BUCKET_GRANT
    _schema: ClassVar = [("op_id", _U128T), ("account", _U64), ("unit", _UNIT), ("amount", _DEC),
                         ("valid_from_ms", _U64), ("valid_until_ms", _U64), ("priority", _I16),
                         ("credit_limit", _DEC),
                         ("services", _List(_U8, BUCKET_SERVICES_MAX, _U32, 4))]


@dataclass
class LimitSet:
    """LIMIT_SET: the spend control (a cap) of a unit and period kind on a subtree, or
    ``cap=None`` to remove that control (SPEC 6.5). ``period``, ``soft`` and ``alerts``
    (thresholds in percent of the cap, e.g. ``[80, 100]``) are version 3; an older connection
    cannot carry them."""

    op_id: int
    account: int
    unit: str
    cap: Optional[Decimal] = None
    period: LimitPeriod = LimitPeriod()
    soft: bool = False
    alerts: list = field(default_factory=list)  # list[int], percents 1..=250, increasing
    KIND: ClassVar[Kind] = Kind.LIMIT_SET
    _schema: ClassVar = [("op_id", _U128T), ("account", _U64), ("unit", _UNIT), ("cap", _Opt(_DEC)),
                         ("period", _PERIOD, 3), ("soft", _BOOL, 3), ("alerts", _THRESHOLDS, 3)]


@dataclass
class BalanceQuery:
    """BALANCE_QUERY (SPEC 6.5)."""

    account: int
    KIND: ClassVar[Kind] = Kind.BALANCE_QUERY
    _schema: ClassVar = [("account", _U64)]


@dataclass
class ReservationList:
    """RESERVATION_LIST, one page (SPEC 6.5)."""

    account: int
    after: int = 0
    limit: int = 0
    KIND: ClassVar[Kind] = Kind.RESERVATION_LIST
    _schema: ClassVar = [("account", _U64), ("after", _U64), ("limit", _U32)]


@dataclass
class AdminResult:
    """ADMIN_RESULT (SPEC 6.6)."""

    code: int
    bucket: int = 0
    balance: Decimal = Decimal(0)
    KIND: ClassVar[Kind] = Kind.ADMIN_RESULT
    _schema: ClassVar = [("code", _U32), ("bucket", _U64), ("balance", _DEC)]


@dataclass
class BucketInfo:
    """One bucket of a BALANCE answer (SPEC 6.6)."""

    bucket: int
    unit: str
    amount: Decimal
    held: Decimal
    available: Decimal
    credit_limit: Decimal
    valid_from_ms: int
    valid_until_ms: int
    priority: int
    expired: bool
    services: list = field(default_factory=list)  # list[int]
    _schema: ClassVar = [("bucket", _U64), ("unit", _UNIT), ("amount", _DEC), ("held", _DEC),
                         ("available", _DEC), ("credit_limit", _DEC), ("valid_from_ms", _U64),
                         ("valid_until_ms", _U64), ("priority", _I16), ("expired", _BOOL),
                         ("services", _List(_U8, BUCKET_SERVICES_MAX, _U32, 4))]


@dataclass
class LimitInfo:
    """One spend control of a BALANCE answer (version 3, SPEC 6.6): ``used`` in the current
    period plus ``held`` counts against ``cap``; the period ends at ``period_end_ms``."""

    unit: str
    cap: Decimal
    used: Decimal
    held: Decimal
    period: LimitPeriod
    soft: bool
    period_start_ms: int
    period_end_ms: int
    alerts: list = field(default_factory=list)  # list[int]: thresholds, percent of the cap
    _schema: ClassVar = [("unit", _UNIT), ("cap", _DEC), ("used", _DEC), ("held", _DEC),
                         ("period", _PERIOD), ("soft", _BOOL), ("alerts", _THRESHOLDS),
                         ("period_start_ms", _U64), ("period_end_ms", _U64)]

    @property
    def headroom(self) -> Decimal:
        """What the subtree may still reserve or spend under it this period (cap - used - held)."""
        return self.cap - self.used - self.held


@dataclass
class Balance:
    """BALANCE: an account's status, buckets in draw order and (version 3) spend controls
    (SPEC 6.6)."""

    account: int
    parent: Optional[int]
    status: AccountStatus
    draws_on_parent: bool
    buckets: list = field(default_factory=list)  # list[BucketInfo]
    limits: list = field(default_factory=list)  # list[LimitInfo]; version 3, else empty
    KIND: ClassVar[Kind] = Kind.BALANCE
    _schema: ClassVar = [("account", _U64), ("parent", _Opt(_U64)), ("status", _Enum(AccountStatus)),
                         ("draws_on_parent", _BOOL),
                         ("buckets", _List(_U16, BUCKETS_MAX, _Rec(BucketInfo), 99)),
                         ("limits", _List(_U8, LIMITS_MAX, _Rec(LimitInfo), 73), 3, _DROP)]

    def total(self, unit: str, what: str = "amount") -> Decimal:
        """Sum of one column (``amount``, ``held`` or ``available``) over the buckets of ``unit``."""
        return sum((getattr(b, what) for b in self.buckets if b.unit == unit), Decimal(0))

    def limit(self, unit: str, period_kind: Optional[int] = None) -> Optional[LimitInfo]:
        """The spend control on ``unit`` (of ``period_kind``: 0 lifetime, 1..=12 months, 13
        fixed), if the account has one (version 3); without ``period_kind``, the first one of
        the unit. An account may hold one control per unit and period kind."""
        return next((lim for lim in self.limits if lim.unit == unit
                     and (period_kind is None or lim.period.kind == period_kind)), None)


@dataclass
class ReservationInfo:
    """One open reservation (SPEC 6.6)."""

    reservation: int
    account: int
    unit: str
    remaining: Decimal
    expires_at_ms: int
    _schema: ClassVar = [("reservation", _U64), ("account", _U64), ("unit", _UNIT),
                         ("remaining", _DEC), ("expires_at_ms", _U64)]


@dataclass
class Reservations:
    """RESERVATIONS, one page (SPEC 6.6)."""

    more: bool
    reservations: list = field(default_factory=list)  # list[ReservationInfo]
    KIND: ClassVar[Kind] = Kind.RESERVATIONS
    _schema: ClassVar = [("more", _BOOL),
                         ("reservations", _List(_U16, RESERVATIONS_MAX, _Rec(ReservationInfo), 44))]


@dataclass
class RateCardApply:
    """RATECARD_APPLY (SPEC 6.8)."""

    op_id: int
    name: str
    text: str
    KIND: ClassVar[Kind] = Kind.RATECARD_APPLY
    _schema: ClassVar = [("op_id", _U128T), ("name", _Str(RATECARD_NAME_MAX)),
                         ("text", _Str(RATECARD_TEXT_MAX))]


@dataclass
class RateCardShow:
    """RATECARD_SHOW; empty card for every card (SPEC 6.8)."""

    card: str = ""
    KIND: ClassVar[Kind] = Kind.RATECARD_SHOW
    _schema: ClassVar = [("card", _Str(RATECARD_ID_MAX))]


@dataclass
class RateCardResult:
    """RATECARD_RESULT (SPEC 6.8)."""

    code: int
    card: str
    versions_added: int
    message: str
    KIND: ClassVar[Kind] = Kind.RATECARD_RESULT
    _schema: ClassVar = [("code", _U32), ("card", _Str(RATECARD_ID_MAX)),
                         ("versions_added", _U16), ("message", _Str(RATECARD_MESSAGE_MAX))]


@dataclass
class RateCardVersionInfo:
    """One version of a rate card (SPEC 6.8)."""

    version: int
    effective_from_ms: int
    charge_unit: str
    currency: str
    _schema: ClassVar = [("version", _U32), ("effective_from_ms", _U64), ("charge_unit", _UNIT),
                         ("currency", _UNIT)]


@dataclass
class RateCardInfo:
    """One rate card and its versions (SPEC 6.8)."""

    card: str
    active: bool
    versions: list = field(default_factory=list)  # list[RateCardVersionInfo]
    _schema: ClassVar = [("card", _Str(RATECARD_ID_MAX)), ("active", _BOOL),
                         ("versions", _List(_U16, RATECARD_VERSIONS_MAX, _Rec(RateCardVersionInfo), 18))]


@dataclass
class RateCards:
    """RATECARDS (SPEC 6.8)."""

    cards: list = field(default_factory=list)  # list[RateCardInfo]
    KIND: ClassVar[Kind] = Kind.RATECARDS
    _schema: ClassVar = [("cards", _List(_U16, RATECARDS_MAX, _Rec(RateCardInfo), 5))]


@dataclass
class Status:
    """STATUS (version 2, admin only): the server's state (SPEC 6.9)."""

    KIND: ClassVar[Kind] = Kind.STATUS
    _schema: ClassVar = []


@dataclass
class StatusResult:
    """STATUS_RESULT (version 2, SPEC 6.9)."""

    version: str
    uptime_s: int
    ready: bool
    recovered_lsn: int
    durable_lsn: int
    queue_depth: int
    queue_capacity: int
    connections: int
    sessions: int
    reservations: int
    checkpoint_lsn: int
    checkpoint_at_ms: int
    wal_bytes: int
    data_dir_bytes: int
    KIND: ClassVar[Kind] = Kind.STATUS_RESULT
    _schema: ClassVar = [("version", _Str(SERVER_NAME_MAX)), ("uptime_s", _U64), ("ready", _BOOL),
                         ("recovered_lsn", _U64), ("durable_lsn", _U64), ("queue_depth", _U32),
                         ("queue_capacity", _U32), ("connections", _U32), ("sessions", _U64),
                         ("reservations", _U64), ("checkpoint_lsn", _U64),
                         ("checkpoint_at_ms", _U64), ("wal_bytes", _U64), ("data_dir_bytes", _U64)]


@dataclass
class Backup:
    """BACKUP (version 2, admin only): write a backup into ``dir`` (SPEC 6.10)."""

    dir: str
    KIND: ClassVar[Kind] = Kind.BACKUP
    _schema: ClassVar = [("dir", _Str(4096))]


@dataclass
class BackupResult:
    """BACKUP_RESULT (version 2, SPEC 6.10)."""

    code: int
    lsn: int
    digest: int
    bytes: int
    message: str = ""
    KIND: ClassVar[Kind] = Kind.BACKUP_RESULT
    _schema: ClassVar = [("code", _U32), ("lsn", _U64), ("digest", _U64), ("bytes", _U64),
                         ("message", _Str(ERROR_MESSAGE_MAX))]


@dataclass
class AlertSubscribe:
    """ALERT_SUBSCRIBE (version 3): deliver every alert with ``seq`` > ``after`` (0: every
    alert the server keeps), then each new one; replaces the connection's subscription
    (SPEC 6.11)."""

    after: int = 0
    KIND: ClassVar[Kind] = Kind.ALERT_SUBSCRIBE
    _schema: ClassVar = [("after", _U64)]


@dataclass
class AlertSubscribed:
    """ALERT_SUBSCRIBED (version 3): the oldest ``seq`` the server keeps (``last_seq + 1`` when
    none) and the newest raised (0: none yet), SPEC 6.11."""

    oldest_seq: int
    last_seq: int
    KIND: ClassVar[Kind] = Kind.ALERT_SUBSCRIBED
    _schema: ClassVar = [("oldest_seq", _U64), ("last_seq", _U64)]

    def missed(self, after: int) -> int:
        """How many alerts numbered after ``after`` the server no longer keeps (server-wide
        numbers: an organisation's share of them may be fewer)."""
        return max(self.oldest_seq - after - 1, 0)

    def _problem(self) -> Optional[str]:
        if not 1 <= self.oldest_seq <= self.last_seq + 1:
            return f"oldest_seq {self.oldest_seq} is not in 1..=last_seq + 1 ({self.last_seq + 1})"
        return None


@dataclass
class Alert:
    """ALERT (version 3), pushed with request id 0: the control of ``(account, unit,
    period_kind)`` reached ``threshold_pct`` percent of ``cap`` in the period starting at
    ``period_start_ms`` (SPEC 6.11). ``seq`` numbers alerts server-wide."""

    seq: int
    at_ms: int
    account: int
    unit: str
    period_kind: int
    period_start_ms: int
    threshold_pct: int
    used: Decimal
    cap: Decimal
    soft: bool = False
    KIND: ClassVar[Kind] = Kind.ALERT
    _schema: ClassVar = [("seq", _Ranged("<Q", 1, (1 << 64) - 1)), ("at_ms", _U64),
                         ("account", _U64), ("unit", _UNIT),
                         ("period_kind", _Ranged("<B", 0, PERIOD_KIND_FIXED)),
                         ("period_start_ms", _U64),
                         ("threshold_pct", _Ranged("<B", 1, ALERT_PCT_MAX)), ("used", _DEC),
                         ("cap", _DEC), ("soft", _BOOL)]


@dataclass
class ErrorReply:
    """ERROR: a protocol-level failure (SPEC 6.7); ``code`` is a raw u16."""

    code: int
    message: str = ""
    KIND: ClassVar[Kind] = Kind.ERROR
    _schema: ClassVar = [("code", _U16), ("message", _Str(ERROR_MESSAGE_MAX))]


BATCH_REQUEST_KINDS = frozenset([Kind.CCR] + [Kind(k) for k in range(0x20, 0x28)])
BATCH_ANSWER_KINDS = frozenset([Kind.CCA, Kind.ADMIN_RESULT, Kind.BALANCE, Kind.RESERVATIONS,
                                Kind.ERROR])


class _Entries(_Type):
    """BATCH / BATCH_RESULT entries: ``u16`` count, then ``u32 len | u8 kind | body`` each."""

    def __init__(self, allowed: frozenset) -> None:
        self.allowed = allowed
        self.zero = []

    def encode(self, out: bytearray, v: Any, name: str) -> None:
        entries = list(v)
        if len(entries) > BATCH_MAX:
            raise EncodeError(f"{name}: {len(entries)} entries, above {BATCH_MAX}")
        out += struct.pack("<H", len(entries))
        for i, m in enumerate(entries):
            kind = getattr(m, "KIND", None)
            if kind not in self.allowed:
                raise EncodeError(f"{name}[{i}]: {type(m).__name__} may not be a batch entry here")
            at = len(out)
            out += b"\0\0\0\0"
            out.append(kind)
            _encode_fields(out, m)
            out[at:at + 4] = struct.pack("<I", len(out) - at - 4)

    def decode(self, r: _Reader, name: str) -> list:
        (n,) = struct.unpack("<H", r.take(2, f"{name} count"))
        if n > BATCH_MAX:
            raise r.bad(f"{name}: {n} entries, above {BATCH_MAX}", ErrorCode.BATCH_TOO_LARGE)
        if n * 13 > r.end - r.pos:
            raise r.bad(f"{name}: {n} entries cannot fit in the bytes left")
        out = []
        for i in range(n):
            (length,) = struct.unpack("<I", r.take(4, f"{name}[{i}] length"))
            if length < 1 or length > r.end - r.pos:
                raise r.bad(f"{name}[{i}]: entry length {length} does not fit the body")
            end = r.pos + length
            kind_byte = r.buf[r.pos]
            cls = MESSAGE_CLASSES.get(kind_byte)
            if cls is None:
                raise r.bad(f"{name}[{i}]: unknown kind 0x{kind_byte:02x}", ErrorCode.UNKNOWN_KIND)
            if cls.KIND not in self.allowed:
                raise r.bad(f"{name}[{i}]: kind {cls.KIND.name} may not be a batch entry here")
            sub = _Reader(r.buf, r.pos + 1, end, r.rid, r.version)
            out.append(_decode_fields(cls, sub))
            if sub.pos != end:
                raise r.bad(f"{name}[{i}]: {end - sub.pos} bytes left over in the entry")
            r.pos = end
        return out


@dataclass
class Batch:
    """BATCH: many CCRs or admin requests in one frame, applied in order (SPEC 6.3)."""

    entries: list = field(default_factory=list)
    KIND: ClassVar[Kind] = Kind.BATCH
    _schema: ClassVar = [("entries", _Entries(BATCH_REQUEST_KINDS))]


@dataclass
class BatchResult:
    """BATCH_RESULT: entry i answers entry i of the BATCH (SPEC 6.3)."""

    entries: list = field(default_factory=list)
    KIND: ClassVar[Kind] = Kind.BATCH_RESULT
    _schema: ClassVar = [("entries", _Entries(BATCH_ANSWER_KINDS))]


MESSAGE_CLASSES: dict[int, type] = {
    cls.KIND.value: cls
    for cls in (Hello, HelloOk, Ping, Pong, Batch, BatchResult, Ccr, Cca, AccountCreate,
                AccountStatusChange, TopUp, Adjust, BucketGrant, LimitSet, BalanceQuery,
                ReservationList, AdminResult, Balance, Reservations, RateCardApply, RateCardShow,
                RateCardResult, RateCards, Status, StatusResult, Backup, BackupResult,
                AlertSubscribe, AlertSubscribed, Alert, ErrorReply)
}
"""Kind byte → message class: every kind (STATUS, BACKUP and their answers are version 2; the
alert kinds version 3)."""

KIND_SINCE: dict[Kind, int] = {Kind.STATUS: 2, Kind.STATUS_RESULT: 2, Kind.BACKUP: 2,
                               Kind.BACKUP_RESULT: 2, Kind.ALERT_SUBSCRIBE: 3,
                               Kind.ALERT_SUBSCRIBED: 3, Kind.ALERT: 3}
"""The protocol version that added a kind (absent: version 1); an older connection does not
have it (SPEC 4)."""


@dataclass
class Frame:
    """One frame: the request id and the message (kind and flags follow from it)."""

    request_id: int
    message: Any


def encode_frame(request_id: int, message: Any, max_frame: int = DEFAULT_MAX_FRAME,
                 version: int = 1) -> bytes:
    """The frame's bytes as ``version`` lays them out; refuses anything a SPEC decoder would
    refuse (e.g. CCR attributes in version 1)."""
    kind = getattr(message, "KIND", None)
    if kind is None or MESSAGE_CLASSES.get(kind) is not type(message):
        raise EncodeError(f"{message!r} is not a protocol message")
    out = _Out(b"\0\0\0\0")
    out.version = version
    out.append(kind)
    out.append(1 if kind == Kind.ERROR else 0)
    _U64.encode(out, request_id, "request_id")
    _encode_fields(out, message)
    length = len(out) - LENGTH_PREFIX_LEN
    if length > min(max_frame, MAX_FRAME_CAP):
        raise EncodeError(f"frame of {length} bytes is above the maximum of {max_frame}")
    out[0:4] = struct.pack("<I", length)
    return bytes(out)


def decode_frame(buf: bytes, max_frame: int = DEFAULT_MAX_FRAME,
                 version: int = 1) -> Optional[tuple[Frame, int]]:
    """Decodes the first frame in ``buf`` (SPEC 3.1) as a connection of ``version`` reads it.

    Returns ``(frame, bytes consumed)``, or None when more bytes are needed.
    Raises WireError for malformed input; ``fatal`` tells whether the frame
    boundary is lost, else ``skip`` is the frame's size on the wire.
    """
    if len(buf) < LENGTH_PREFIX_LEN:
        return None
    (length,) = struct.unpack_from("<I", buf, 0)
    if length > max_frame:
        raise WireError(ErrorCode.FRAME_TOO_LARGE,
                        f"frame length {length} above the maximum {max_frame}", fatal=True)
    if length < HEADER_LEN:
        raise WireError(ErrorCode.MALFORMED_FRAME,
                        f"frame length {length} below the 10-byte header", fatal=True)
    total = LENGTH_PREFIX_LEN + length
    if len(buf) < total:
        return None
    kind_byte, flags = buf[4], buf[5]
    (rid,) = struct.unpack_from("<Q", buf, 6)
    cls = MESSAGE_CLASSES.get(kind_byte)
    if cls is None:
        raise WireError(ErrorCode.UNKNOWN_KIND, f"unknown kind 0x{kind_byte:02x}", rid, skip=total)
    want = 1 if cls.KIND == Kind.ERROR else 0
    if flags != want:
        raise WireError(ErrorCode.MALFORMED_FRAME,
                        f"flags {flags} on {cls.KIND.name}, expected {want}", rid, skip=total)
    r = _Reader(bytes(buf[:total]), LENGTH_PREFIX_LEN + HEADER_LEN, total, rid, version)
    try:
        message = _decode_fields(cls, r)
    except WireError as e:
        e.skip = total
        raise
    if r.pos != total:
        raise WireError(ErrorCode.MALFORMED_FRAME,
                        f"{total - r.pos} bytes left over after {cls.KIND.name}", rid, skip=total)
    return Frame(rid, message), total


def encode_decimal(d: Decimal) -> bytes:
    """The 17 wire bytes of one decimal (SPEC 2.2)."""
    out = bytearray()
    _DEC.encode(out, d, "decimal")
    return bytes(out)


__all__ = [
    "Kind", "RequestType", "EventAction", "TerminationCause", "FinalUnitAction", "AccountStatus",
    "CreditKind", "DenialReason", "Denial", "LimitPeriod", "LimitInfo", "WireError", "EncodeError", "Frame", "encode_frame", "decode_frame",
    "decimal_parts", "decimal_from_parts", "encode_decimal", "MESSAGE_CLASSES",
    "Hello", "HelloOk", "Ping", "Pong", "Batch", "BatchResult", "Ccr", "Cca", "ServiceRequest",
    "ServiceAnswer", "AccountCreate", "AccountStatusChange", "TopUp", "Adjust", "BucketGrant",
    "LimitSet", "BalanceQuery", "ReservationList", "AdminResult", "Balance", "BucketInfo",
    "Reservations", "ReservationInfo", "RateCardApply", "RateCardShow", "RateCardResult",
    "RateCards", "RateCardInfo", "RateCardVersionInfo", "ErrorReply", "NEVER", "PROTOCOL_VERSION",
    "PROTOCOL_VERSION_MIN", "ATTRIBUTES_MAX", "ATTRIBUTE_KEY_MAX", "ATTRIBUTE_VALUE_MAX",
    "LIMITS_MAX", "AlertSubscribe", "AlertSubscribed", "Alert", "KIND_SINCE",
    "ALERT_THRESHOLDS_MAX", "ALERT_PCT_MAX", "ALERTS_KEPT", "ALERT_QUEUE_MAX",
]
