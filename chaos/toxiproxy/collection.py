"""The set of proxies and the operations the API performs on it, with Toxiproxy's semantics.

Every mutation holds `lock`, so two API calls never interleave half-way (one may await a proxy stopping
while another arrives). Reads need no lock: everything runs on one event loop and a snapshot is taken
without awaiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Final

from . import codec, errors, limits
from .proxy import AddressError, Proxy, normalize_listen

log: Final = logging.getLogger("raftmq.chaos.toxiproxy.collection")

_proxy_fields: Final = ("name", "listen", "upstream", "enabled")


@dataclass(frozen=True)
class ProxyInput:
    """A decoded proxy body; None means "not given" (keep the current value or use the default)."""

    name: str | None
    listen: str | None
    upstream: str | None
    enabled: bool | None


def parse_proxy_input(value: object, go_type: str = "toxiproxy.Proxy") -> ProxyInput:
    obj = codec.as_object(value, go_type)
    picked = codec.fields(obj or {}, _proxy_fields)
    return ProxyInput(
        name=codec.as_string(picked.get("name"), "Proxy", "name"),
        listen=codec.as_string(picked.get("listen"), "Proxy", "listen"),
        upstream=codec.as_string(picked.get("upstream"), "Proxy", "upstream"),
        enabled=codec.as_bool(picked.get("enabled"), "Proxy", "enabled"),
    )


def _checked_listen(listen: str | None, suffix: str = "") -> str:
    try:
        return normalize_listen(listen or "")
    except AddressError as error:
        # Go Toxiproxy only finds this out when listening and answers 500; it is bad input, so 400 here.
        raise errors.bad_request_body(f"listen tcp: {error}{suffix}") from None


class ProxyCollection:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lock = asyncio.Lock()
        self._proxies: dict[str, Proxy] = {}

    def get(self, name: str) -> Proxy:
        proxy = self._proxies.get(name)
        if proxy is None:
            raise errors.proxy_not_found()
        return proxy

    def all(self) -> list[Proxy]:
        return list(self._proxies.values())

    async def create(self, entry: ProxyInput) -> Proxy:
        if not entry.name:
            raise errors.missing_field("name")
        if not entry.upstream:
            raise errors.missing_field("upstream")
        listen = _checked_listen(entry.listen)
        async with self.lock:
            if entry.name in self._proxies:
                raise errors.proxy_exists()
            if len(self._proxies) >= limits.proxies_max:
                raise errors.ApiError(400, f"too many proxies: at most {limits.proxies_max}")
            proxy = Proxy(entry.name, listen, entry.upstream, self.rng)
            if entry.enabled is None or entry.enabled:
                await proxy.start()  # A bind failure raises 500 and the proxy is not added.
            self._proxies[proxy.name] = proxy
            return proxy

    async def update(self, name: str, value: object) -> Proxy:
        proxy = self.get(name)
        entry = parse_proxy_input(value)
        async with self.lock:
            proxy = self.get(name)  # It may have been deleted while we waited for the lock.
            listen = proxy.listen if entry.listen is None else _checked_listen(entry.listen)
            upstream = proxy.upstream if entry.upstream is None else entry.upstream
            enabled = proxy.enabled if entry.enabled is None else entry.enabled
            if listen != proxy.listen or upstream != proxy.upstream:
                # Changing either address drops every connection, as in Toxiproxy.
                await proxy.stop()
                proxy.listen = listen
                proxy.upstream = upstream
            if enabled and not proxy.enabled:
                await proxy.start()
            elif not enabled and proxy.enabled:
                await proxy.stop()
            return proxy

    async def delete(self, name: str) -> None:
        async with self.lock:
            proxy = self.get(name)
            await proxy.stop()
            del self._proxies[name]

    async def populate(self, value: object) -> tuple[list[Proxy], errors.ApiError | None]:
        """Create or replace proxies from a JSON array, validating every entry before touching any.

        An entry with the name, listen and upstream of an existing proxy leaves it untouched (toxics and
        enabled state kept); a differing one stops and replaces it. On a failure, the proxies handled before
        it are returned with the error.
        """
        items = codec.as_array(value, "[]toxiproxy.Proxy")
        entries: list[tuple[ProxyInput, str]] = []
        for number, item in enumerate(items or [], start=1):
            entry = parse_proxy_input(item, "toxiproxy.Proxy")
            if not entry.name:
                raise errors.missing_field(f"name at proxy {number}")
            if not entry.upstream:
                raise errors.missing_field(f"upstream at proxy {number}")
            entries.append((entry, _checked_listen(entry.listen, f" at proxy {number}")))
        handled: list[Proxy] = []
        async with self.lock:
            for entry, listen in entries:
                assert entry.name and entry.upstream
                existing = self._proxies.get(entry.name)
                if existing is not None and existing.listen == listen and existing.upstream == entry.upstream:
                    handled.append(existing)
                    continue
                if existing is None and len(self._proxies) >= limits.proxies_max:
                    return handled, errors.ApiError(400, f"too many proxies: at most {limits.proxies_max}")
                if existing is not None:
                    await existing.stop()
                proxy = Proxy(entry.name, listen, entry.upstream, self.rng)
                if entry.enabled is None or entry.enabled:
                    try:
                        await proxy.start()
                    except errors.ApiError as error:
                        # As in Toxiproxy, a replaced proxy stays stopped and the rest is not applied.
                        return handled, error
                self._proxies[proxy.name] = proxy
                handled.append(proxy)
        return handled, None

    async def reset(self) -> None:
        """Start every proxy (already running is fine) and remove every toxic."""
        async with self.lock:
            for proxy in list(self._proxies.values()):
                await proxy.start()
                proxy.remove_all_toxics()

    async def stop_all(self) -> None:
        async with self.lock:
            proxies = list(self._proxies.values())
            await asyncio.gather(*(proxy.stop() for proxy in proxies), return_exceptions=True)
