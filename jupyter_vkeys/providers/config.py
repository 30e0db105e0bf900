"""Provider configuration and real credentials.

Real provider keys are never written in plain configuration: a provider names
the environment variable or the secrets file that holds its key, and the key is
read once at start-up into a :class:`ProviderConfig` whose ``repr`` hides it.
Called by the gateway when it starts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..dialects import DIALECTS
from ..keys import TOKEN_PREFIX

log = logging.getLogger("jupyter_vkeys.providers")

KINDS = ("openai", "anthropic", "fake")

DEFAULT_PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1",
               "api_key_env": "OPENAI_API_KEY"},
    "anthropic": {"kind": "anthropic", "base_url": "https://api.anthropic.com",
                  "api_key_env": "ANTHROPIC_API_KEY"},
}


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream: its API kind, base URL, how to authenticate, and its real key.

    ``kind`` is ``openai`` (OpenAI or any OpenAI-compatible server: Azure, vLLM,
    Ollama...), ``anthropic``, or ``fake``. ``auth_header`` names the header the
    key goes in (``authorization`` as Bearer by default; ``api-key`` for Azure;
    ``x-api-key`` for Anthropic). ``price_provider`` is the genai-prices provider
    id used to price its models.
    """

    name: str
    kind: str
    base_url: str = ""
    auth_header: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    price_provider: str = ""
    ca_file: str = ""
    credential_source: str = ""
    api_key: str = field(default="", repr=False, compare=False)

    @property
    def has_credentials(self) -> bool:
        """Whether a real key was found (keyless local servers set ``api_key_env: ""``)."""
        return bool(self.api_key) or self.credential_source == "none"

    def auth_headers(self) -> dict[str, str]:
        """The header(s) carrying the real key, added to each upstream request."""
        if not self.api_key:
            return {}
        wire = DIALECTS.get(self.kind)
        header = self.auth_header or (wire.credential_header if wire else "authorization")
        value = f"Bearer {self.api_key}" if header == "authorization" else self.api_key
        return {header: value}


def _read_secret(spec: Mapping[str, Any], name: str) -> tuple[str, str]:
    """Return ``(key, where it came from)`` without ever logging the key."""
    if "api_key" in spec:
        raise ValueError(f"provider {name!r}: put the real key in an environment variable "
                         "(api_key_env) or a secrets file (api_key_file), not in configuration")
    path = spec.get("api_key_file")
    if path:
        file = Path(os.path.expanduser(str(path)))
        try:
            return file.read_text().strip(), f"file {file}"
        except OSError as exc:
            log.warning("provider %s: cannot read secrets file %s (%s)", name, file,
                        exc.strerror)
            return "", f"file {file} (unreadable)"
    env = spec.get("api_key_env", f"{name.upper()}_API_KEY")
    if env == "" or env is None:
        return "", "none"
    return os.environ.get(str(env), "").strip(), f"environment variable {env}"


def load_providers(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, ProviderConfig]:
    """Build provider configs from the ``providers`` trait; raises ValueError on bad ones."""
    providers: dict[str, ProviderConfig] = {}
    for name, spec in specs.items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"provider {name!r}: expected an object, got {spec!r}")
        unknown = set(spec) - {"kind", "base_url", "api_key_env", "api_key_file", "auth_header",
                               "headers", "query", "price_provider", "api_key", "ca_file"}
        if unknown:
            raise ValueError(f"provider {name!r}: unknown settings {sorted(unknown)}")
        kind = spec.get("kind", "openai")
        if kind not in KINDS:
            raise ValueError(f"provider {name!r}: kind must be one of {', '.join(KINDS)}")
        key, source = ("", "none") if kind == "fake" else _read_secret(spec, name)
        if key.startswith(TOKEN_PREFIX):
            raise ValueError(
                f"provider {name!r}: the credential in {source} is a jupyter-vkeys virtual key "
                f"({TOKEN_PREFIX}...), not a real {kind} key; the gateway would send it "
                "upstream. Unset it in the gateway's environment (virtual keys belong in the "
                "clients' environment) or point the provider at the real key")
        providers[name] = ProviderConfig(
            name=name, kind=kind, base_url=str(spec.get("base_url", "")).rstrip("/"),
            auth_header=str(spec.get("auth_header", "")).lower(),
            headers=dict(spec.get("headers", {})), query=dict(spec.get("query", {})),
            price_provider=str(spec.get("price_provider", name if name in ("openai", "anthropic")
                                        else "")),
            ca_file=str(spec.get("ca_file", "")), credential_source=source, api_key=key)
    return providers
