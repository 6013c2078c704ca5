"""Signed requests (Binance's SIGNED endpoints).

The key travels in the X-MBX-APIKEY header; `signature` is the hex HMAC-SHA256, under the key's secret,
of the query string followed by the request body (both as sent, without the `signature` parameter);
`timestamp` (ms) must lie within `recvWindow` ms (default 5000, at most the configured maximum) before
the server's time, and at most 1 s after it. Within that window a signature is accepted once: an exact
replay of a signed request (same endpoint, same signature) is refused (the window bounds what has to be
remembered), by whichever of the gateway's worker processes it reaches: the signatures seen are kept in
their shared state (services.gateway.shared).

The key's user is the only user a request acts for: no parameter names a user.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from services.common.errors import Reason
from services.gateway.errors import (
    BAD_API_KEY_FORMAT,
    INVALID_SIGNATURE,
    INVALID_TIMESTAMP,
    MANDATORY_PARAM,
    REJECTED_API_KEY,
    ApiError,
)
from services.gateway.keys import ActiveKey, KeyStore
from services.gateway.params import is_digits
from services.gateway.shared import SharedState
from services.gateway.shared import key_of as key_of_text

FUTURE_TOLERANCE_MS = 1_000
MAX_API_KEY = 80
INVALID_RECV_WINDOW = -1131


def sign(secret: str | bytes, payload: str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.digest(key, payload.encode(), hashlib.sha256).hex()  # one-shot: OpenSSL's HMAC


def strip_signature(raw: str) -> tuple[str, str]:
    """(raw parameters without `signature=...`, the signature); the signature is the last parameter
    that carries it."""
    if "signature=" not in raw:
        return raw, ""
    at = raw.rfind("&signature=")
    if at >= 0 and "&" not in raw[at + 1 :] and raw.find("signature=") == at + 1:
        return raw[:at], raw[at + 11 :]  # the usual case: one signature, the last parameter
    kept: list[str] = []
    signature = ""
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature=") :]
        else:
            kept.append(part)
    return "&".join(kept), signature


class ReplayGuard:
    """Signatures seen in the last `window_ms` (+ FUTURE_TOLERANCE_MS), in the workers' shared state
    (services.gateway.shared), so a replay is refused by whichever worker it reaches. The table is
    bounded: when a signature's probe chain is full, the entry that expires first is forgotten early
    (that only shortens the replay protection of that request to the recvWindow check)."""

    def __init__(self, window_ms: int, state: SharedState) -> None:
        self.window_ms = window_ms
        self.state = state

    def first_time(self, signature: str, now_ms: int) -> bool:
        return self.state.first_time(
            key_of_text(signature), now_ms, now_ms + self.window_ms + FUTURE_TOLERANCE_MS
        )


@dataclass(frozen=True, slots=True)
class Verified:
    key: ActiveKey

    @property
    def user_id(self) -> int:
        return self.key.key.user_id


def key_of(store: KeyStore, header: str | None) -> ActiveKey:
    if not header or len(header) > MAX_API_KEY:
        raise ApiError(401, BAD_API_KEY_FORMAT, "API-key format invalid.", reason=str(Reason.UNAUTHENTICATED))
    key = store.active(header)
    if key is None:
        raise ApiError(
            401,
            REJECTED_API_KEY,
            "Invalid API-key, IP, or permissions for action.",
            reason=str(Reason.API_KEY_NOT_FOUND),
        )
    return key


class Verifier:
    def __init__(
        self,
        store: KeyStore,
        state: SharedState,
        *,
        max_recv_window_ms: int,
        default_recv_window_ms: int,
    ) -> None:
        self.store = store
        self.max_recv_window_ms = max_recv_window_ms
        self.default_recv_window_ms = default_recv_window_ms
        self.replays = ReplayGuard(max_recv_window_ms, state)

    def verify(
        self,
        api_key: str | None,
        query: str,
        body: str,
        params: dict[str, str],
        *,
        endpoint: str = "",
        now_ms: int | None = None,
    ) -> Verified:
        """`endpoint` (e.g. "GET /api/v3/account") scopes the replay check: the signature covers only
        the parameters, so two endpoints called with the same parameters in the same millisecond (a page
        refreshing its account and its strategies) carry the same signature and are not replays."""
        key = key_of(self.store, api_key)
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        stamp = params.get("timestamp", "")
        if not stamp:
            raise ApiError(
                400,
                MANDATORY_PARAM,
                "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
                reason=str(Reason.INVALID_FIELD),
            )
        window_text = params.get("recvWindow", "")
        if not is_digits(stamp) or len(stamp) > 16 or (window_text and not is_digits(window_text)):
            raise ApiError(
                400,
                INVALID_TIMESTAMP,
                "timestamp and recvWindow are integers of milliseconds.",
                reason=str(Reason.INVALID_FIELD),
            )
        window = int(window_text[:12]) if window_text else self.default_recv_window_ms
        if window <= 0 or window > self.max_recv_window_ms:
            raise ApiError(
                400,
                INVALID_RECV_WINDOW,
                f"recvWindow must be in 1..{self.max_recv_window_ms}.",
                reason=str(Reason.VALUE_OUT_OF_RANGE),
            )
        ts = int(stamp)
        if ts >= now + FUTURE_TOLERANCE_MS or now - ts > window:
            raise ApiError(
                400,
                INVALID_TIMESTAMP,
                "Timestamp for this request is outside of the recvWindow.",
                reason=str(Reason.TIMESTAMP_OUTSIDE_RECV_WINDOW),
            )
        q, sig_q = strip_signature(query)
        b, sig_b = strip_signature(body)
        signature = sig_b or sig_q
        if not signature:
            raise ApiError(
                400,
                MANDATORY_PARAM,
                "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
                reason=str(Reason.INVALID_FIELD),
            )
        expected = sign(key.secret, q + b)
        if not hmac.compare_digest(expected, signature.lower()[:64]) or len(signature) != 64:
            raise ApiError(
                400,
                INVALID_SIGNATURE,
                "Signature for this request is not valid.",
                reason=str(Reason.INVALID_SIGNATURE),
            )
        if not self.replays.first_time(f"{endpoint} {expected}", now):
            raise ApiError(
                400,
                INVALID_SIGNATURE,
                "This signed request was already received (replay refused).",
                reason=str(Reason.INVALID_SIGNATURE),
            )
        return Verified(key)
