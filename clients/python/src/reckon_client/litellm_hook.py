"""A LiteLLM proxy hook that reserves every completion through Reckon.

Per request, as one Reckon credit-control session (a fresh session id):

1. before the call (``async_pre_call_hook``): an INITIAL reserving the prompt's
   input tokens plus the output tokens asked for (``max_tokens``, or the
   configured ``max_output_tokens`` when none was asked) on the service the
   model maps to, for the account the LiteLLM key / team / end user maps to.
   When Reckon grants fewer output tokens than asked (the balance or a cap
   affords fewer) or none were asked, ``max_tokens`` is capped at the grant
   instead of refusing. A refusal carries Reckon's result code;
2. after the call (``async_post_call_success_hook``): a TERMINATE committing the
   real usage from the response (``usage.prompt_tokens`` /
   ``completion_tokens``); the rest of the reservation is released;
3. on error, timeout or client disconnect (``async_post_call_failure_hook``): a
   TERMINATE with nothing used, which releases the whole reservation;
4. streaming (``async_post_call_streaming_iterator_hook``): commits at stream
   end with the usage of the last chunk (asked for upstream with
   ``stream_options.include_usage``). A stream that fails, or that the client
   leaves before any chunk, is released; one the client leaves after output was
   delivered commits what was delivered.

Reckon is the only shared state, so any number of proxy processes enforce one
budget exactly. Configuration: a YAML (or JSON) file named by
``RECKON_HOOK_CONFIG``, or ``ReckonBudget(config_dict)``; see ``HookConfig``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncGenerator, Mapping, Optional

from litellm.integrations.custom_logger import CustomLogger

from . import wire
from .client import Client
from .codes import ResultCode, result_name
from .errors import ReckonError

log = logging.getLogger("reckon_client.litellm")

_COMPLETION_CALLS = frozenset({"completion", "acompletion", "text_completion",
                               "atext_completion"})
_IDENTITIES = ("end_user", "key", "key_alias", "team", "user", "org")
_OPEN_MAX = 100_000  # open requests tracked per process before stale ones are dropped
_STALE_S = 3600


@dataclass
class HookConfig:
    """What the hook needs to know; every field has a YAML key of the same name."""

    server: str = "127.0.0.1:7878"
    """Reckon's address, host:port."""
    credential: str = ""
    """Reckon credential (an organisation's gateway token); or ``credential_file``, or
    the RECKON_TOKEN environment variable."""
    credential_file: str = ""
    """A file holding the credential (e.g. the server's admin.token)."""
    timeout_s: float = 2.0
    """Timeout of each Reckon call (retries included); the proxy refuses (fails closed)
    when Reckon cannot be reached in time."""
    account_by: str = "end_user"
    """Which LiteLLM identity names the Reckon account: end_user, key (hashed key),
    key_alias, team, user or org."""
    accounts: dict = field(default_factory=dict)
    """LiteLLM identity → Reckon account id. Identities not listed that are decimal
    numbers are taken as account ids themselves."""
    default_account: Optional[int] = None
    """Account for requests whose identity is missing or unmapped; None refuses them."""
    models: dict = field(default_factory=dict)
    """Model name (as clients send it) → Reckon service id (rating group); the server's
    ``[[product]]`` config may bind the service to model attributes for rate cards."""
    default_service: Optional[int] = None
    """Service for models not listed; None refuses them. With ``model_attribute`` set, one
    service can price every model: its rate card has a rule per model."""
    model_attribute: str = "model"
    """Attribute the request's model is sent under on every Reckon request (protocol
    version 2), for rate-card rules such as ``when = { model = "gpt-4o" }``; empty sends
    none."""
    input_unit: str = "tokens_in"
    """Unit of prompt tokens; empty to charge output tokens only."""
    output_unit: str = "tokens_out"
    max_output_tokens: int = 4096
    """Output tokens reserved when a request names no max_tokens (the model's window)."""
    min_output_tokens: int = 1
    """A request is refused when Reckon grants fewer output tokens than this."""
    session_prefix: str = ""
    """Start of every session id (default: ``litellm;<host>;<pid>``)."""
    commit_retry_s: float = 120.0
    """How long a commit that could not reach Reckon is retried in the background."""

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "HookConfig":
        """Builds and checks a config; unknown keys are refused, naming the key."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(m) - known)
        if unknown:
            raise ValueError(f"reckon hook config: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**dict(m))
        if cfg.account_by not in _IDENTITIES:
            raise ValueError(f"reckon hook config: account_by {cfg.account_by!r} is not one of "
                             f"{list(_IDENTITIES)}")
        cfg.accounts = {str(k): int(v) for k, v in (cfg.accounts or {}).items()}
        cfg.models = {str(k): int(v) for k, v in (cfg.models or {}).items()}
        if cfg.max_output_tokens < 1 or not 0 <= cfg.min_output_tokens <= cfg.max_output_tokens:
            raise ValueError("reckon hook config: need 1 <= max_output_tokens and "
                             "0 <= min_output_tokens <= max_output_tokens")
        if ":" not in cfg.server:
            raise ValueError(f"reckon hook config: server {cfg.server!r} is not host:port")
        return cfg

    @classmethod
    def load(cls, path: str) -> "HookConfig":
        """Reads a YAML or JSON file."""
        text = Path(path).read_text(encoding="utf-8")
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml  # a dependency of litellm[proxy]
            data = yaml.safe_load(text) or {}
        return cls.from_mapping(data)

    def token(self) -> str:
        """The credential to send, from the config, its file or RECKON_TOKEN."""
        if self.credential:
            return self.credential
        if self.credential_file:
            return Path(self.credential_file).read_text(encoding="utf-8").strip()
        return os.environ.get("RECKON_TOKEN", "")


class ReckonRefusal(Exception):
    """Why the hook refused a request; becomes the proxy's HTTP error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


_STATUS = {
    ResultCode.CREDIT_LIMIT_REACHED: 402,
    ResultCode.END_USER_SERVICE_DENIED: 403,
    ResultCode.AUTHORIZATION_REJECTED: 403,
    ResultCode.USER_UNKNOWN: 403,
    ResultCode.TOO_BUSY: 503,
}


@dataclass
class _Reservation:
    """One request's open Reckon session."""

    session_id: str
    account: int
    service: int
    input_tokens: int
    granted_output: int
    stream: bool
    attributes: list = field(default_factory=list)
    """Sent on the TERMINATE too: each Reckon request is priced with its own attributes."""
    settled: bool = False
    opened: float = field(default_factory=time.monotonic)


def _http_error(refusal: ReckonRefusal) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status_code=refusal.status, detail={
        "error": f"reckon: {refusal.code}: {refusal.message}", "reckon_code": refusal.code})


class ReckonBudget(CustomLogger):
    """The LiteLLM hook: ``litellm_settings: callbacks: <module>.<instance>``."""

    def __init__(self, config: Optional[Mapping[str, Any] | HookConfig] = None) -> None:
        super().__init__()
        if config is None:
            path = os.environ.get("RECKON_HOOK_CONFIG")
            if not path:
                raise ValueError("ReckonBudget: pass a config or set RECKON_HOOK_CONFIG")
            config = HookConfig.load(path)
        elif not isinstance(config, HookConfig):
            config = HookConfig.from_mapping(config)
        self.config = config
        self.prefix = config.session_prefix or f"litellm;{socket.gethostname()};{os.getpid()}"
        self._client: Optional[Client] = None
        self._client_loop: Optional[asyncio.AbstractEventLoop] = None
        self._background: set = set()
        self._open: dict[str, _Reservation] = {}

    # ------------------------------------------------------------------ plumbing

    def client(self) -> Client:
        """The Reckon client of the running event loop (one connection per proxy worker)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            host, port = self.config.server.rsplit(":", 1)
            self._client = Client(host, int(port), self.config.token(),
                                  client_name="reckon-litellm-hook/0.1.0",
                                  timeout=self.config.timeout_s)
            self._client_loop = loop
        return self._client

    def account_of(self, user_api_key_dict: Any, data: Mapping[str, Any]) -> Optional[int]:
        """The Reckon account a request is charged to, by the configured identity."""
        by = self.config.account_by
        ident = {
            "end_user": lambda: getattr(user_api_key_dict, "end_user_id", None) or data.get("user"),
            "key": lambda: getattr(user_api_key_dict, "api_key", None),
            "key_alias": lambda: getattr(user_api_key_dict, "key_alias", None),
            "team": lambda: getattr(user_api_key_dict, "team_id", None),
            "user": lambda: getattr(user_api_key_dict, "user_id", None),
            "org": lambda: getattr(user_api_key_dict, "org_id", None),
        }[by]()
        if ident is not None:
            ident = str(ident)
            if ident in self.config.accounts:
                return self.config.accounts[ident]
            if ident.isdigit() and int(ident) < 1 << 64:
                return int(ident)
        return self.config.default_account

    def service_of(self, model: str) -> Optional[int]:
        """The Reckon service a model is charged under."""
        return self.config.models.get(model, self.config.default_service)

    @staticmethod
    def _input_tokens(data: Mapping[str, Any]) -> int:
        import litellm

        model = str(data.get("model", ""))
        if data.get("messages") is not None:
            return int(litellm.token_counter(model=model, messages=data["messages"]))
        prompt = data.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
        return int(litellm.token_counter(model=model, text=text))

    @staticmethod
    def _key(data: Mapping[str, Any]) -> Optional[str]:
        meta = data.get("metadata")
        if isinstance(meta, dict):
            return meta.get("reckon_session")
        return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ reserve

    async def reserve(self, user_api_key_dict: Any, data: dict) -> dict:
        """Reserves for one request and caps its max_tokens; raises ReckonRefusal."""
        cfg = self.config
        model = str(data.get("model", ""))
        account = self.account_of(user_api_key_dict, data)
        if account is None:
            raise ReckonRefusal(403, "NO_ACCOUNT",
                                f"no Reckon account for this request's {cfg.account_by}")
        service = self.service_of(model)
        if service is None:
            raise ReckonRefusal(400, "NO_SERVICE", f"model {model!r} is not mapped to a Reckon service")
        attributes = []
        if cfg.model_attribute and model:
            if len(model.encode("utf-8")) > wire.ATTRIBUTE_VALUE_MAX:
                raise ReckonRefusal(400, "MODEL_NAME_TOO_LONG",
                                    f"model names sent to Reckon are at most "
                                    f"{wire.ATTRIBUTE_VALUE_MAX} bytes")
            attributes = [(cfg.model_attribute, model)]
        input_tokens = self._input_tokens(data) if cfg.input_unit else 0
        field_name = "max_completion_tokens" if data.get("max_completion_tokens") is not None \
            else "max_tokens"
        asked = data.get(field_name)
        want = int(asked) if asked is not None else cfg.max_output_tokens
        if want < 1:
            raise ReckonRefusal(400, "INVALID_MAX_TOKENS", f"{field_name} must be at least 1")
        session_id = f"{self.prefix};{uuid.uuid4().hex}"[:wire.SESSION_ID_MAX]
        try:
            asks = {cfg.input_unit: input_tokens} if cfg.input_unit else {}
            asks[cfg.output_unit] = want
            cca = await self.client().initial(session_id, account, {service: asks},
                                              attributes=attributes, check=False)
        except ReckonError as e:
            raise ReckonRefusal(503, "RECKON_UNAVAILABLE", f"Reckon did not answer: {e}") from e
        answer = cca.service(service)
        code = cca.result_code if cca.result_code != ResultCode.SUCCESS or answer is None \
            else answer.result_code
        granted_in = answer.granted_of(cfg.input_unit) if answer and cfg.input_unit else Decimal(0)
        granted_out = int(answer.granted_of(cfg.output_unit)) if answer else 0
        if code == ResultCode.SUCCESS and (granted_in < input_tokens
                                           or granted_out < max(cfg.min_output_tokens, 1)):
            code = ResultCode.CREDIT_LIMIT_REACHED
        if code != ResultCode.SUCCESS:
            if cca.result_code == ResultCode.SUCCESS:
                await self._release(_Reservation(session_id, account, service, input_tokens,
                                                 granted_out, False, attributes))
            raise ReckonRefusal(_STATUS.get(code, 400), result_name(code),
                                f"Reckon refused account {account}, service {service} "
                                f"({input_tokens} input + {want} output tokens asked; "
                                f"{granted_out} output tokens affordable)")
        if asked is None or granted_out < want:
            data[field_name] = granted_out
        stream = bool(data.get("stream"))
        if stream:
            opts = dict(data.get("stream_options") or {})
            opts["include_usage"] = True
            data["stream_options"] = opts
        meta = data.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
            data["metadata"] = meta
        meta["reckon_session"] = session_id
        if len(self._open) >= _OPEN_MAX:
            self._forget_stale()
        self._open[session_id] = _Reservation(session_id, account, service, input_tokens,
                                              granted_out, stream, attributes)
        return data

    def _forget_stale(self) -> None:
        """Drops requests LiteLLM never reported back on (their reservations expire in
        Reckon at their validity), so the map stays bounded."""
        cutoff = time.monotonic() - _STALE_S
        for key in [k for k, r in self._open.items() if r.opened < cutoff]:
            log.warning("reckon: no outcome for %s after %d s; leaving it to expire", key, _STALE_S)
            del self._open[key]

    # ------------------------------------------------------------------ settle

    async def _terminate(self, r: _Reservation, used: Mapping[str, int],
                         cause: wire.TerminationCause) -> None:
        """Sends the TERMINATE; when Reckon cannot be reached, keeps retrying in the
        background (same session id and request number: applied once)."""
        r.settled = True
        self._open.pop(r.session_id, None)
        usage = {r.service: {u: int(n) for u, n in used.items() if n and u}}
        try:
            await self.client().terminate(r.session_id, r.account, 1, usage, cause=cause,
                                          attributes=r.attributes)
            return
        except ReckonError as e:
            log.warning("reckon: settling %s failed (%s); retrying in the background",
                        r.session_id, e)
        self._spawn(self._retry_terminate(r, usage, cause))

    async def _retry_terminate(self, r: _Reservation, usage: Mapping, cause: Any) -> None:
        deadline = time.monotonic() + self.config.commit_retry_s
        while time.monotonic() < deadline:
            try:
                await self.client().terminate(r.session_id, r.account, 1, usage, cause=cause,
                                              attributes=r.attributes)
                return
            except ReckonError as e:
                log.warning("reckon: settling %s failed again: %s", r.session_id, e)
                await asyncio.sleep(1.0)
        log.error("reckon: gave up settling %s; its reservation expires at its validity",
                  r.session_id)

    async def commit(self, r: _Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        """Commits real usage and releases the rest."""
        await self._terminate(r, {self.config.input_unit: prompt_tokens,
                                  self.config.output_unit: completion_tokens},
                              wire.TerminationCause.LOGOUT)

    async def _release(self, r: _Reservation,
                       cause: wire.TerminationCause = wire.TerminationCause.SERVICE_NOT_PROVIDED
                       ) -> None:
        await self._terminate(r, {}, cause)

    def _reservation(self, data: Mapping[str, Any]) -> Optional[_Reservation]:
        key = self._key(data)
        r = self._open.get(key) if key else None
        return r if r is not None and not r.settled else None

    @staticmethod
    def _usage(response: Any) -> Optional[tuple[int, int]]:
        usage = getattr(response, "usage", None)
        if usage is None and isinstance(response, dict):
            usage = response.get("usage")
        if usage is None:
            return None
        get = usage.get if isinstance(usage, dict) else (lambda k: getattr(usage, k, None))
        prompt, completion = get("prompt_tokens"), get("completion_tokens")
        if prompt is None or completion is None:
            return None
        return int(prompt), int(completion)

    def _count_text(self, data: Mapping[str, Any], text: str) -> int:
        import litellm

        return int(litellm.token_counter(model=str(data.get("model", "")), text=text)) if text else 0

    # ------------------------------------------------------------------ LiteLLM hooks

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: Any) -> Any:
        """Reserves before the call; caps max_tokens at the grant; refuses with Reckon's code."""
        if str(call_type) not in _COMPLETION_CALLS:
            return data
        try:
            return await self.reserve(user_api_key_dict, data)
        except ReckonRefusal as refusal:
            raise _http_error(refusal) from None

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any,
                                           response: Any) -> Any:
        """Commits the response's usage (non-streaming)."""
        r = self._reservation(data)
        if r is None or r.stream:
            return response
        usage = self._usage(response)
        if usage is None:
            text = ""
            for choice in getattr(response, "choices", None) or []:
                message = getattr(choice, "message", None)
                text += (getattr(message, "content", None) or getattr(choice, "text", "") or "")
            usage = (r.input_tokens, self._count_text(data, text))
        await self.commit(r, *usage)
        return response

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any,
                                           traceback_str: Optional[str] = None) -> Any:
        """Releases the whole reservation: the call failed, timed out or the client left."""
        r = self._reservation(request_data)
        if r is not None:
            status = getattr(original_exception, "status_code", None)
            cause = (wire.TerminationCause.LINK_BROKEN if status == 499
                     else wire.TerminationCause.SERVICE_NOT_PROVIDED)
            await self._release(r, cause)
        return None

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any, response: Any,
                                                      request_data: dict
                                                      ) -> AsyncGenerator[Any, None]:
        """Passes the stream through; commits at its end with the last chunk's usage."""
        r = self._reservation(request_data)
        if r is None:
            async for chunk in response:
                yield chunk
            return
        usage: Optional[tuple[int, int]] = None
        text: list[str] = []
        finished = False
        try:
            async for chunk in response:
                usage = self._usage(chunk) or usage
                for choice in getattr(chunk, "choices", None) or []:
                    delta = getattr(choice, "delta", None)
                    piece = getattr(delta, "content", None) if delta is not None else None
                    if piece:
                        text.append(piece)
                yield chunk
            finished = True
        except (GeneratorExit, asyncio.CancelledError):
            # The client left: what was delivered was served; nothing delivered, nothing owed.
            delivered = "".join(text)
            if delivered:
                self._spawn(self.commit(r, r.input_tokens, self._count_text(request_data, delivered)))
            else:
                self._spawn(self._release(r, wire.TerminationCause.LINK_BROKEN))
            raise
        except Exception:
            await self._release(r)
            raise
        if finished:
            if usage is None:
                usage = (r.input_tokens, self._count_text(request_data, "".join(text)))
            await self.commit(r, *usage)
