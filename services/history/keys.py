"""The secrets of the history service: the key that signs its page tokens.

`page_token_key(config)` is the one place history gets it: the `page_token_key` of the exchange's
generated credentials (services.common.auth; `<data_dir>/secrets/credentials.json` by default, mode
0600, created on first run), so every history replica of one exchange signs and checks the same way.
"""

from __future__ import annotations

from services.common.auth import ensure_credentials
from services.common.config import ExchangeConfig
from services.common.security import accounts_sources


def page_token_key(config: ExchangeConfig) -> bytes:
    return ensure_credentials(config.credentials_path(), accounts_sources(config)).page_token_key
