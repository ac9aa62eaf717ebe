"""Client configuration: environment variables, overridden by command-line flags.

    NEFFCACHE_URL              the service (default http://127.0.0.1:8080, which the CLI then says
                               it used); a trailing /v1 is tolerated
    NEFFCACHE_TOKEN            bearer token sent with every request (none: no header)
    NEFFCACHE_RUNTIME_VERSION  the local runtime version `pull` checks artifacts against
                               ("2.34.10.0" for every runtime, or "neuron-runtime=2.34.10.0,torch=2.13.0")
    NEFFCACHE_HTTP_TIMEOUT_S   seconds to wait for the service to answer one request (default 60)

The server reads other NEFFCACHE_* variables; this class ignores them.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEFFCACHE_", extra="ignore")

    url: str = Field(default_factory=lambda: DEFAULT_URL)
    token: str | None = None
    runtime_version: str | None = None
    http_timeout_s: float = Field(default=60.0, gt=0)

    @property
    def url_is_default(self) -> bool:
        """Neither NEFFCACHE_URL nor --url named the service: it is DEFAULT_URL."""
        return "url" not in self.model_fields_set


def load_settings(url: str | None = None, token: str | None = None,
                  runtime_version: str | None = None) -> ClientSettings:
    """Settings from the environment, with the flags that were given taking precedence."""
    settings = ClientSettings()
    updates = {k: v for k, v in {"url": url, "token": token, "runtime_version": runtime_version}.items() if v}
    return settings.model_copy(update=updates) if updates else settings
