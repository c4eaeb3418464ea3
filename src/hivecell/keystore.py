"""Where provider API keys live: the OS keyring when one works, else config.toml (0600).

Resolved at the edge (``KeyStore.detect()`` in the CLI); library code gets the store it is
handed. A provider table whose key is in the keyring says ``api_key_store = "keyring"``; the
key itself is the keyring entry (service ``hivecell``, user = the provider's name).

Headless servers usually have no keyring (keyring's ``fail`` or ``null`` backend): keys then
stay in config.toml, which is always written 0600, and ``key_storage`` in the API says so.
All methods block (D-Bus, files): async callers use a worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from hivecell.errors import ConfigError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

# keyring is imported where it is used: importing it scans entry points (~1 s on a busy
# machine), which every server start and CLI command would pay otherwise.

SERVICE = "hivecell"
KEYRING = "keyring"  # the value of api_key_store in a provider table
Storage = Literal["keyring", "config"]


class KeyStore:
    def __init__(self, backend: KeyringBackend | None) -> None:
        self._backend = backend

    @classmethod
    def config_only(cls) -> KeyStore:
        """No keyring: keys stay in config.toml."""
        return cls(None)

    @classmethod
    def detect(cls) -> KeyStore:
        """The OS keyring if a real backend answers, else ``config_only``."""
        import keyring
        from keyring.errors import KeyringError

        try:
            backend = keyring.get_keyring()
            if not _os_keyring(backend):
                return cls(None)
            backend.get_password(SERVICE, "probe")
        except (KeyringError, RuntimeError, OSError):
            return cls(None)
        return cls(backend)

    @property
    def kind(self) -> Storage:
        return "config" if self._backend is None else "keyring"

    def get(self, provider: str) -> str | None:
        if self._backend is None:
            return None
        from keyring.errors import KeyringError

        try:
            return self._backend.get_password(SERVICE, provider)
        except KeyringError as exc:
            raise _error("read", provider, exc) from exc

    def set(self, provider: str, key: str) -> None:
        if self._backend is None:
            raise ConfigError("no OS keyring is available", op="keystore")
        from keyring.errors import KeyringError

        try:
            self._backend.set_password(SERVICE, provider, key)
        except KeyringError as exc:
            raise _error("store", provider, exc) from exc

    def delete(self, provider: str) -> None:
        if self._backend is None:
            return
        from keyring.errors import KeyringError, PasswordDeleteError

        try:
            self._backend.delete_password(SERVICE, provider)
        except PasswordDeleteError:
            pass  # nothing stored: already gone
        except KeyringError as exc:
            raise _error("delete", provider, exc) from exc


def _os_keyring(backend: KeyringBackend) -> bool:
    """A real OS store (Secret Service, KWallet, Keychain, Windows): priority >= 1. keyring's
    fail/null backends (0, -1) store nothing, and the plain-file backends of keyrings.alt
    (< 1) would only move the key from one file to another."""
    from keyring.backends.chainer import ChainerBackend

    if isinstance(backend, ChainerBackend):
        return any(_os_keyring(b) for b in backend.backends)
    return float(backend.priority) >= 1


def _error(action: str, provider: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"the OS keyring could not {action} the key of provider {provider!r}: {exc}; "
        "unlock the keyring, or run without one (keys then stay in config.toml, 0600)",
        op="keystore",
        context={"provider": provider},
    )
