"""raftmq's client for the Toxiproxy API, and a helper that runs a Toxiproxy server as a child process.

`ProxyClient` drives a server through toxiproxy-python 0.1.1 and fixes that library's sharp edges (the
fixed behaviour is checked by tests/chaos/test_toxiproxy_conformance.py, e.g.
test_wrapper_confirms_changes, test_wrapper_times_out_and_reports_unreachable_servers and
test_bind_failure_is_a_clear_500_not_a_key_error):

- host and port belong to the client instance. The library keeps them in class attributes of `APIConsumer`,
  so every library call is made under a process-wide lock with this client's host and port bound;
- every HTTP call has a timeout. The library calls `requests` without one; its `requests` is replaced by a
  stand-in that adds `timeout=` and turns transport failures into `ToxiproxyUnavailable`/`ToxiproxyTimeout`;
- every error status is an exception: 400/404/409 as before (our classes subclass the library's
  `InvalidToxic`/`NotFound`/`ProxyExists`), and 403 and 5xx too (the library let them pass, so a bind
  failure surfaced as `KeyError: 'name'` and a failed enable flipped the local flag anyway);
- every change is confirmed with a follow-up GET, and `ToxiproxyNotApplied` is raised when the server's
  state does not show it;
- calls the library lacks are made with `requests` directly (with the same timeout): toxic update in place,
  proxy PATCH, the real `/populate` (the library emulates it client-side), single GETs.

All methods block; call them from threads (or `asyncio.to_thread`), never on an event loop that serves
proxies. Timeouts, deadlines and attempts are in chaos/limits.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json as json_module
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote, urlsplit

import requests
import toxiproxy
import toxiproxy.api as toxiproxy_api
from raftmq.chaos import limits
from toxiproxy import exceptions as toxiproxy_exceptions

_repository_root: Final = Path(__file__).resolve().parent.parent


# --- errors ----------------------------------------------------------------------------------------


class ToxiproxyError(Exception):
    """Anything that went wrong talking to a Toxiproxy server."""


class ToxiproxyUnavailable(ToxiproxyError):
    """The server could not be reached (refused, reset, name not resolved)."""


class ToxiproxyTimeout(ToxiproxyUnavailable, TimeoutError):
    """The server did not answer within the client's timeout."""


class ToxiproxyAPIError(ToxiproxyError):
    """The server answered with an error status. `message` is its `error` field (or its body)."""

    def __init__(self, status: int, message: str, request: str) -> None:
        super().__init__(f"{request}: {status} {message}")
        self.status = status
        self.message = message
        self.request = request


class BadRequestError(ToxiproxyAPIError, toxiproxy_exceptions.InvalidToxic):
    """400: the request was invalid (bad body, invalid toxic type or stream, missing field)."""


class ForbiddenError(ToxiproxyAPIError):
    """403: the server refused the client (e.g. a browser User-Agent)."""


class NotFoundError(ToxiproxyAPIError, toxiproxy_exceptions.NotFound):
    """404: no such proxy or toxic."""


class ConflictError(ToxiproxyAPIError, toxiproxy_exceptions.ProxyExists):
    """409: the proxy or toxic already exists."""


class ServerError(ToxiproxyAPIError):
    """5xx: the server failed, e.g. a proxy could not listen (`bind: address already in use`)."""


class PopulateError(ToxiproxyAPIError):
    """/populate failed; `handled` holds the proxies the server had created or kept before the failure."""

    def __init__(self, status: int, message: str, request: str, handled: Sequence[ProxyState]) -> None:
        super().__init__(status, message, request)
        self.handled = tuple(handled)


class ToxiproxyNotApplied(ToxiproxyError):
    """A change was accepted but a follow-up GET shows it did not take effect."""


_errors_by_status: Final[Mapping[int, type[ToxiproxyAPIError]]] = {
    400: BadRequestError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
}


def _error_message(response: requests.Response) -> str:
    # Toxiproxy writes `{"error": …, "status": …}` as text/plain: parse the body whatever the header says.
    try:
        document = response.json()
    except ValueError:
        return response.text.strip() or response.reason or "(no body)"
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return document["error"]
    return response.text.strip()


def _raise_for_status(response: requests.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    request = f"{response.request.method} {urlsplit(response.url).path}"
    error_type = _errors_by_status.get(status, ServerError if status >= 500 else ToxiproxyAPIError)
    raise error_type(status, _error_message(response), request)


def _send(method: str, url: str, timeout_s: float, **kwargs: Any) -> requests.Response:
    """One HTTP request with a timeout; transport failures become ToxiproxyUnavailable/ToxiproxyTimeout."""
    assert timeout_s > 0
    try:
        return requests.request(method, url, timeout=timeout_s, **kwargs)
    except requests.Timeout as error:
        raise ToxiproxyTimeout(f"{method} {url}: no answer within {timeout_s} s") from error
    except requests.ConnectionError as error:
        raise ToxiproxyUnavailable(f"{method} {url}: {error}") from error


# --- toxiproxy-python's transport ------------------------------------------------------------------

# toxiproxy-python keeps host and port in class attributes: one server per process. Every library call is
# made holding this lock, with the calling client's host, port and timeout bound.
_library_lock: Final = threading.RLock()
_library_settings: Final = threading.local()


class _LibraryTransport:
    """Stands in for the `requests` module inside toxiproxy-python's api.py: adds timeouts and raises for
    every error status (the library raised only for 400, 404 and 409)."""

    def get(self, url: str, params: object = None, **kwargs: Any) -> requests.Response:
        return self._request("GET", url, params=params, **kwargs)

    def post(self, url: str, data: object = None, json: object = None, **kwargs: Any) -> requests.Response:
        return self._request("POST", url, data=data, json=json, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return self._request("DELETE", url, **kwargs)

    @staticmethod
    def _request(method: str, url: str, **kwargs: Any) -> requests.Response:
        timeout_s = kwargs.pop("timeout", None) or getattr(
            _library_settings, "timeout_s", limits.proxy_request_timeout_s_default
        )
        response = _send(method, url, timeout_s, **kwargs)
        _raise_for_status(response)
        return response


def _install_library_transport() -> None:
    with _library_lock:
        if not isinstance(toxiproxy_api.requests, _LibraryTransport):
            toxiproxy_api.requests = _LibraryTransport()


# --- state snapshots -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToxicState:
    """A toxic as the server reports it."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, int]

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ToxicState:
        return cls(
            name=document["name"],
            type=document["type"],
            stream=document["stream"],
            toxicity=float(document["toxicity"]),
            attributes=dict(document.get("attributes") or {}),
        )


@dataclasses.dataclass(frozen=True)
class ProxyState:
    """A proxy as the server reports it. `listen` is the bound address once the proxy is listening."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[ToxicState, ...]

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ProxyState:
        return cls(
            name=document["name"],
            listen=document["listen"],
            upstream=document["upstream"],
            enabled=bool(document["enabled"]),
            toxics=tuple(ToxicState.from_json(toxic) for toxic in document.get("toxics") or ()),
        )

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def toxic(self, name: str) -> ToxicState | None:
        return next((toxic for toxic in self.toxics if toxic.name == name), None)


@dataclasses.dataclass(frozen=True)
class RawResponse:
    """An API answer as received, for callers that check statuses themselves."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json_module.loads(self.body)


@contextlib.contextmanager
def _answer_shape(request: str) -> Iterator[None]:
    """Turn a body of an unexpected shape into a ToxiproxyError naming the request."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ToxiproxyError(f"{request}: unexpected answer ({error!r})") from error


def _same_float(left: float, right: float) -> bool:
    # toxicity is a float32 on the server.
    return math.isclose(left, right, rel_tol=1e-6, abs_tol=1e-6)


# --- the client ------------------------------------------------------------------------------------


class ProxyClient:
    """A Toxiproxy API client for one server (host and port fixed per instance), with timeouts on every
    call and every change confirmed. Errors: `ToxiproxyError` and its subclasses."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8474,
        *,
        timeout_s: float = limits.proxy_request_timeout_s_default,
    ):
        assert 0 < port <= 65535, port
        assert timeout_s > 0, timeout_s
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        _install_library_transport()

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = limits.proxy_request_timeout_s_default) -> ProxyClient:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"not a Toxiproxy API URL: {url!r} (expected http://host:port)")
        return cls(parts.hostname, parts.port or 8474, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"ProxyClient({self.url})"

    # --- toxiproxy-python, bound to this server ---------------------------------------------------

    @contextlib.contextmanager
    def bound(self) -> Iterator[toxiproxy.Toxiproxy]:
        """toxiproxy-python pointed at this server (with timeouts) for the length of the block.

        Holds a process-wide lock meanwhile, since the library keeps its server in class attributes.
        """
        with _library_lock:
            consumer = toxiproxy_api.APIConsumer
            saved = (consumer.host, consumer.port, getattr(_library_settings, "timeout_s", None))
            consumer.host, consumer.port = self.host, self.port
            _library_settings.timeout_s = self.timeout_s
            try:
                yield toxiproxy.Toxiproxy()
            except (KeyError, TypeError) as error:
                # The library indexes response bodies blindly; a body of an unexpected shape lands here.
                raise ToxiproxyError(f"unexpected answer from {self.url}: {error!r}") from error
            finally:
                consumer.host, consumer.port = saved[0], saved[1]
                _library_settings.timeout_s = saved[2]

    def _library_proxy(self, name: str) -> toxiproxy.Proxy:
        # The library only uses the name to build URLs; the other fields are required by its constructor.
        return toxiproxy.Proxy(name=name, upstream="", enabled=True, listen="")

    # --- plain HTTP -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        """Send one request as given and return the answer whatever its status (with the timeout)."""
        assert path.startswith("/"), path
        response = _send(method, self.url + path, self.timeout_s, json=json, data=data, headers=headers)
        return RawResponse(response.status_code, response.headers, response.content)

    def _call(self, method: str, path: str, json: object = None) -> Any:
        response = _send(method, self.url + path, self.timeout_s, json=json)
        _raise_for_status(response)
        return response.json() if response.content else None

    @staticmethod
    def _path(*names: str) -> str:
        return "".join("/" + quote(name, safe="") for name in names)

    # --- server -----------------------------------------------------------------------------------

    def running(self) -> bool:
        """True if something accepts TCP connections on the API port (bounded by the timeout)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s):
                return True
        except OSError:
            return False

    def version(self) -> str:
        """The server's version ("2.12.0"); older servers answer with bare text, which is accepted too."""
        response = _send("GET", self.url + "/version", self.timeout_s)
        _raise_for_status(response)
        try:
            document = response.json()
        except ValueError:
            return response.text.strip()
        if isinstance(document, dict) and isinstance(document.get("version"), str):
            return document["version"]
        raise ToxiproxyError(f"unexpected /version answer: {response.text!r}")

    def reset(self) -> None:
        """Enable every proxy and remove every toxic (confirmed)."""
        with self.bound() as library:
            library.reset()
        for state in self.proxies().values():
            if not state.enabled or state.toxics:
                raise ToxiproxyNotApplied(f"reset did not take effect on {state.name}: {state}")

    # --- proxies ----------------------------------------------------------------------------------

    def proxies(self) -> dict[str, ProxyState]:
        documents = self._call("GET", "/proxies")
        with _answer_shape("GET /proxies"):
            return {name: ProxyState.from_json(document) for name, document in documents.items()}

    def get(self, name: str) -> ProxyState:
        document = self._call("GET", "/proxies" + self._path(name))
        with _answer_shape(f"GET /proxies/{name}"):
            return ProxyState.from_json(document)

    def create(
        self, name: str, upstream: str, *, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyState:
        """Create a proxy (through toxiproxy-python) and return it as the server reports it.

        A name in use raises `ConflictError` (the library finds it before sending); a listen address that
        cannot be bound raises `ServerError` (500) with the server's message.
        """
        with self.bound() as library:
            try:
                library.create(upstream=upstream, name=name, listen=listen, enabled=enabled)
            except toxiproxy_exceptions.ProxyExists as error:
                if isinstance(error, ToxiproxyAPIError):
                    raise
                raise ConflictError(409, "proxy already exists", "POST /proxies") from error
        state = self.get(name)
        if state.upstream != upstream or state.enabled != enabled:
            raise ToxiproxyNotApplied(f"create of {name} did not take effect: server reports {state}")
        return state

    def update(
        self,
        name: str,
        *,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> ProxyState:
        """PATCH a proxy (omitted fields keep their values). Changing an address drops its connections."""
        body = {
            key: value
            for key, value in (("listen", listen), ("upstream", upstream), ("enabled", enabled))
            if value is not None
        }
        self._call("PATCH", "/proxies" + self._path(name), json=body)
        state = self.get(name)
        wrong = (upstream is not None and state.upstream != upstream) or (
            enabled is not None and state.enabled != enabled
        )
        if wrong:
            raise ToxiproxyNotApplied(f"update of {name} with {body} did not take effect: {state}")
        return state

    def enable(self, name: str) -> ProxyState:
        return self._set_enabled(name, True)

    def disable(self, name: str) -> ProxyState:
        """Stop listening (connects are refused) and close every connection of the proxy."""
        return self._set_enabled(name, False)

    def _set_enabled(self, name: str, enabled: bool) -> ProxyState:
        proxy = self._library_proxy(name)
        with self.bound():
            if enabled:
                proxy.enable()
            else:
                proxy.disable()
        state = self.get(name)
        if state.enabled != enabled:
            verb = "enable" if enabled else "disable"
            raise ToxiproxyNotApplied(f"{verb} of {name} did not take effect: server reports {state}")
        return state

    @contextlib.contextmanager
    def down(self, name: str) -> Iterator[ProxyState]:
        """The proxy disabled for the length of the block, enabled again (confirmed) afterwards."""
        state = self.disable(name)
        try:
            yield state
        finally:
            self.enable(name)

    def destroy(self, name: str) -> None:
        with self.bound() as library:
            library.destroy(self._library_proxy(name))
        try:
            state = self.get(name)
        except NotFoundError:
            return
        raise ToxiproxyNotApplied(f"delete of {name} did not take effect: server still has {state}")

    def destroy_all(self) -> None:
        for name in self.proxies():
            self.destroy(name)

    def populate(self, proxies: Sequence[Mapping[str, Any]]) -> list[ProxyState]:
        """POST /populate (the server's, not the library's client-side imitation).

        Entries with the name, listen and upstream of an existing proxy leave it untouched; differing ones
        replace it (losing their toxics). A listen ending in `:0` never equals the bound address the server
        stores, so pass the `listen` the server reports to keep a proxy. Raises `PopulateError` (with the
        proxies handled before the failure) on an error status.
        """
        response = _send("POST", self.url + "/populate", self.timeout_s, json=list(proxies))
        try:
            document = response.json()
        except ValueError:
            _raise_for_status(response)
            raise ToxiproxyError(f"unexpected /populate answer: {response.text!r}") from None
        with _answer_shape("POST /populate"):
            handled = [ProxyState.from_json(each) for each in (document.get("proxies") or ())]
            message = str(document.get("error") or response.text.strip())
        if response.status_code >= 300:
            raise PopulateError(response.status_code, message, "POST /populate", handled)
        present = self.proxies()
        missing = [state.name for state in handled if state.name not in present]
        if missing:
            raise ToxiproxyNotApplied(f"populate did not take effect for {missing}")
        return handled

    # --- toxics -----------------------------------------------------------------------------------

    def toxics(self, proxy: str) -> list[ToxicState]:
        """The proxy's toxics in the server's order (upstream ones first)."""
        with self.bound():
            records = self._library_proxy(proxy).toxics()
        return [
            ToxicState(
                record.name, record.type, record.stream, float(record.toxicity), dict(record.attributes)
            )
            for record in records.values()
        ]

    def get_toxic(self, proxy: str, name: str) -> ToxicState:
        document = self._call("GET", "/proxies" + self._path(proxy) + "/toxics" + self._path(name))
        with _answer_shape(f"GET /proxies/{proxy}/toxics/{name}"):
            return ToxicState.from_json(document)

    def add_toxic(
        self,
        proxy: str,
        type: str,  # noqa: A002 - the API's own field name.
        *,
        stream: str = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        attributes: Mapping[str, int] | None = None,
    ) -> ToxicState:
        """Add a toxic (through toxiproxy-python) and return it as the server reports it."""
        name = name or f"{type}_{stream}"
        attributes = dict(attributes or {})
        with self.bound():
            self._library_proxy(proxy).add_toxic(
                type=type, stream=stream, name=name, toxicity=toxicity, attributes=attributes
            )
        return self._confirm_toxic(proxy, name, "add", attributes, toxicity, type=type, stream=stream)

    def update_toxic(
        self,
        proxy: str,
        name: str,
        *,
        attributes: Mapping[str, int] | None = None,
        toxicity: float | None = None,
    ) -> ToxicState:
        """Update a toxic in place: given attributes over the current ones; toxicity kept if None."""
        body: dict[str, object] = {}
        if attributes is not None:
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            body["toxicity"] = toxicity
        self._call("PATCH", "/proxies" + self._path(proxy) + "/toxics" + self._path(name), json=body)
        return self._confirm_toxic(proxy, name, "update", dict(attributes or {}), toxicity)

    def remove_toxic(self, proxy: str, name: str) -> None:
        with self.bound():
            self._library_proxy(proxy).destroy_toxic(name)
        try:
            state = self.get_toxic(proxy, name)
        except NotFoundError:
            return
        raise ToxiproxyNotApplied(f"removal of toxic {name} from {proxy} did not take effect: {state}")

    def _confirm_toxic(
        self,
        proxy: str,
        name: str,
        verb: str,
        attributes: Mapping[str, int],
        toxicity: float | None,
        *,
        type: str | None = None,  # noqa: A002
        stream: str | None = None,
    ) -> ToxicState:
        try:
            state = self.get_toxic(proxy, name)
        except NotFoundError as error:
            raise ToxiproxyNotApplied(f"{verb} of toxic {name} on {proxy} did not take effect") from error
        problems = [
            f"{key}={state.attributes.get(key)!r}, wanted {value!r}"
            for key, value in attributes.items()
            if state.attributes.get(key) != value
        ]
        if toxicity is not None and not _same_float(state.toxicity, toxicity):
            problems.append(f"toxicity={state.toxicity}, wanted {toxicity}")
        if type is not None and state.type != type:
            problems.append(f"type={state.type!r}, wanted {type!r}")
        if stream is not None and state.stream.lower() != stream.lower():
            problems.append(f"stream={state.stream!r}, wanted {stream!r}")
        if problems:
            raise ToxiproxyNotApplied(f"{verb} of toxic {name} on {proxy} did not take effect: {problems}")
        return state


# --- running a server ------------------------------------------------------------------------------


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller must cope with losing a race for it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def find_toxiproxy_server() -> str | None:
    """A real `toxiproxy-server`: $TOXIPROXY_SERVER (a path or a name on PATH), else one on PATH."""
    named = os.environ.get("TOXIPROXY_SERVER", "").strip()
    if named:
        found = shutil.which(named)
        if found is None:
            raise ToxiproxyError(f"TOXIPROXY_SERVER={named!r} is not an executable")
        return found
    return shutil.which("toxiproxy-server")


class ToxiproxyServerProcess:
    """A Toxiproxy server in a child process: a real `toxiproxy-server` if one is available, else raftmq's
    (`python -m raftmq.chaos.toxiproxy`), on the given port or a free loopback port.

    `start()` waits (until a deadline) for GET /version to answer; `stop()` sends SIGTERM, then SIGKILL after
    a deadline. The server's output goes to `log_path` (a temporary file unless given, removed by a clean
    stop). Use it as a context manager.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        executable: str | None = None,
        config_path: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_deadline_s: float = limits.proxy_server_start_deadline_s_default,
        stop_deadline_s: float = limits.proxy_server_stop_deadline_s_default,
    ) -> None:
        assert 0 <= port <= 65535, port
        assert start_deadline_s > 0 and stop_deadline_s > 0
        self.host = host
        self.requested_port = port
        self.port = port
        self.executable = executable if executable is not None else find_toxiproxy_server()
        self.kind = "toxiproxy-server" if self.executable else "raftmq"
        self.config_path = None if config_path is None else os.fspath(config_path)
        self.seed = seed
        self.start_deadline_s = start_deadline_s
        self.stop_deadline_s = stop_deadline_s
        self._log_given = log_path is not None
        self.log_path = None if log_path is None else Path(log_path)
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ToxiproxyServerProcess {self.kind} {self.host}:{self.port} {state}>"

    @property
    def url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, *, timeout_s: float = limits.proxy_request_timeout_s_default) -> ProxyClient:
        assert self.port > 0, "start the server first"
        return ProxyClient(self.host, self.port, timeout_s=timeout_s)

    def command(self) -> list[str]:
        if self.executable:
            command = [self.executable]
        else:
            command = [sys.executable, "-m", "raftmq.chaos.toxiproxy"]
        command += ["-host", self.host, "-port", str(self.port)]
        if self.config_path is not None:
            command += ["-config", self.config_path]
        if self.seed is not None:
            command += ["-seed", str(self.seed)]
        return command

    def start(self) -> Self:
        assert self._process is None, "already started"
        attempts = limits.proxy_server_start_attempts_max if self.requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            self.port = self.requested_port or free_loopback_port(self.host)
            try:
                self._start_once()
                return self
            except ToxiproxyError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        if not self._log_given:
            handle, name = tempfile.mkstemp(prefix=f"toxiproxy-{self.port}-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        assert self.log_path is not None
        environment = dict(os.environ)
        if not self.executable:
            # `python -m raftmq.chaos.toxiproxy` must find this checkout, whatever the caller's working directory.
            paths = [str(_repository_root), environment.get("PYTHONPATH", "")]
            environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=str(_repository_root) if not self.executable else None,
            )
        deadline = time.monotonic() + self.start_deadline_s
        client = ProxyClient(self.host, self.port, timeout_s=limits.proxy_server_probe_timeout_s)
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise ToxiproxyError(f"{self.kind} exited with {code} while starting: {self.log_tail()}")
            try:
                client.version()
                return
            except ToxiproxyError:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                waited = f"{self.kind} did not answer on {self.url} within {self.start_deadline_s} s"
                raise ToxiproxyError(f"{waited}: {self.log_tail()}")
            time.sleep(limits.proxy_server_poll_interval_s)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after the stop deadline. Returns the exit code (None if never started)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_deadline_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_deadline_s)
        code = process.returncode
        if code == 0 and not self._log_given and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        return code

    def log_tail(self, byte_count: int = limits.proxy_server_log_tail_bytes) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()[-byte_count:]
        return data.decode("utf-8", errors="replace").strip() or "(empty log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
