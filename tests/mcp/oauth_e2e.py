"""End-to-end: `/mcp` as an OAuth 2.1 protected resource, driven by the
Python `mcp` SDK's OAuth client against a real authorization server.

- The authorization server runs in this process: the SDK's server auth
  routes (`mcp.server.auth.routes.create_auth_routes`: RFC 8414 metadata,
  dynamic client registration, authorization code + PKCE) on Starlette /
  uvicorn, with a provider that approves every authorization request at once
  and issues RS256 JWTs (`iss`, `sub`, `aud` = the RFC 8707 `resource` the
  client asked for, `exp`, `scope`); it publishes its key at /jwks.json.
- `switchboard serve` takes its keys from that URL (`[auth.jwt] jwks_url`),
  names itself `[auth] resource` and routes to an MCP agent (an `mcp`
  SDK server, also in this process, that records the headers it receives).
- The SDK's `OAuthClientProvider`, with nothing but Switchboard's /mcp URL,
  gets a 401, reads the protected resource metadata, discovers the
  authorization server, registers, authorizes, gets a token, lists and
  calls tools (legacy and 2026-07-28 revisions).
- Tokens for another audience, expired, and without the `invoke` scope are
  refused with 401 / 403 and the `WWW-Authenticate` challenges; the
  connection a 401 was answered on stays usable for the client's next
  request (the metadata), or the 401 says `Connection: close`.

Run by scripts/mcp-test with the binary's path; prints `mcp oauth e2e: ok`.
"""

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import httpx2
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import create_auth_routes
from mcp.server.auth.settings import ClientRegistrationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

# Every wait below is bounded by one of these.
START_TIMEOUT = 20.0
FLOW_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port, handed to uvicorn
    (no window in which another process could take the port)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


def recording(app, seen: list):
    """ASGI wrapper that records (method, path, Authorization) of each request."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization")
            seen.append((scope["method"], scope["path"], auth.decode() if auth else None))
        await app(scope, receive, send)

    return wrapped


class InThread:
    """A uvicorn server on a pre-bound socket, in a thread of its own."""

    def __init__(self, app, sock: socket.socket):
        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> "InThread":
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"a test server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


# ---------------------------------------------------------------- the authorization server


class Provider:
    """An `OAuthAuthorizationServerProvider`: dynamic registration, an
    authorization endpoint that approves at once (no login page: the
    resource owner is `alice`), and JWT access tokens bound to the
    RFC 8707 resource of the authorization request."""

    def __init__(self, issuer: str):
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.authorize_requests: list[AuthorizationParams] = []
        self.issued: list[str] = []

    def jwks(self) -> dict:
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    def mint(self, *, aud: str, scope: str | None, exp_in: int = 600, sub: str = "alice",
             client_id: str = "oauth-e2e") -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + exp_in,
                  "client_id": client_id, "jti": secrets.token_hex(8)}
        if scope is not None:
            claims["scope"] = scope
        return jwt.encode(claims, self.key, algorithm="RS256",
                          headers={"kid": self.kid, "typ": "at+jwt"})

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.clients[client_info.client_id] = client_info

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        self.authorize_requests.append(params)
        code = secrets.token_urlsafe(32)
        self.codes[code] = AuthorizationCode(
            code=code, scopes=params.scopes or [], expires_at=time.time() + 120,
            client_id=client.client_id, code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource, subject="alice")
        # RFC 9207: say which authorization server answers.
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state,
                                      iss=self.issuer)

    async def load_authorization_code(self, client, authorization_code: str):
        return self.codes.get(authorization_code)

    def _tokens(self, client_id: str, scopes: list[str], resource: str | None, subject: str) -> OAuthToken:
        if not resource:
            # Tokens of this server are audience-restricted: no resource, no token.
            raise TokenError(error="invalid_target", error_description="a resource (RFC 8707) is required")
        access = self.mint(aud=resource, scope=" ".join(scopes), sub=subject, client_id=client_id)
        self.issued.append(access)
        refresh = secrets.token_urlsafe(32)
        self.refresh_tokens[refresh] = RefreshToken(token=refresh, client_id=client_id, scopes=scopes,
                                                    resource=resource, subject=subject)
        return OAuthToken(access_token=access, token_type="Bearer", expires_in=600,
                          scope=" ".join(scopes), refresh_token=refresh)

    async def exchange_authorization_code(self, client, authorization_code: AuthorizationCode) -> OAuthToken:
        self.codes.pop(authorization_code.code, None)
        return self._tokens(client.client_id, authorization_code.scopes, authorization_code.resource,
                            authorization_code.subject or "alice")

    async def load_refresh_token(self, client, refresh_token: str):
        return self.refresh_tokens.get(refresh_token)

    async def exchange_refresh_token(self, client, refresh_token: RefreshToken, scopes: list[str]) -> OAuthToken:
        self.refresh_tokens.pop(refresh_token.token, None)
        return self._tokens(client.client_id, scopes or refresh_token.scopes, refresh_token.resource,
                            refresh_token.subject or "alice")

    async def load_access_token(self, token: str) -> AccessToken | None:
        return None  # this server issues tokens; Switchboard verifies them

    async def revoke_token(self, token) -> None:
        pass


def authorization_server() -> tuple[InThread, Provider, list]:
    sock = bound_socket()
    # The issuer identifier as the SDK renders it in the RFC 8414 metadata
    # (an origin-only URL gets a trailing slash); `iss`, the metadata and
    # `[auth.jwt] issuer` must be the same string.
    issuer = AnyHttpUrl(f"http://127.0.0.1:{sock.getsockname()[1]}")
    provider = Provider(str(issuer))
    routes = create_auth_routes(
        provider, issuer,
        client_registration_options=ClientRegistrationOptions(
            enabled=True, valid_scopes=["invoke", "audit", "admin"], default_scopes=["invoke"]))
    routes.append(Route("/jwks.json", lambda request: JSONResponse(provider.jwks())))
    seen: list = []
    return InThread(recording(Starlette(routes=routes), seen), sock), provider, seen


# ---------------------------------------------------------------- the MCP agent behind Switchboard


def upstream() -> tuple[InThread, list]:
    server = MCPServer("weather", log_level="WARNING")

    @server.tool()
    def forecast(city: str) -> str:
        """The forecast for a city."""
        return f"sunny in {city}"

    seen: list = []
    app = server.streamable_http_app(host="127.0.0.1")
    return InThread(recording(app, seen), bound_socket()), seen


# ---------------------------------------------------------------- the client


class MemoryStorage:
    """The SDK's `TokenStorage`, in memory."""

    def __init__(self):
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


class Browser:
    """Stands in for the user's browser: follows the authorization URL (the
    server approves at once) and hands the redirect's parameters back."""

    def __init__(self):
        self.result: AuthorizationCodeResult | None = None
        self.visited: list[str] = []

    async def redirect_handler(self, authorization_url: str) -> None:
        self.visited.append(authorization_url)
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.get(authorization_url, follow_redirects=False)
        assert r.status_code in (302, 303), (r.status_code, r.text)
        query = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["location"]).query)
        assert "error" not in query, query
        self.result = AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0],
                                              iss=query.get("iss", [None])[0])

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.result is not None, "the authorization URL was not visited"
        return self.result


def oauth_client(mcp_url: str, storage: MemoryStorage, browser: Browser) -> OAuthClientProvider:
    return OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="switchboard oauth e2e",
            redirect_uris=["http://127.0.0.1:9/callback"],  # never contacted: the Browser reads it
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"]),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler)


async def list_and_call(mcp_url: str, auth: OAuthClientProvider, mode: str) -> None:
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with Client(streamable_http_client(mcp_url, http_client=http), mode=mode) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert "forecast" in tools, sorted(tools)
            result = await client.call_tool("forecast", {"city": "Oslo"})
            assert not result.is_error, result
            assert "sunny in Oslo" in result.content[0].text, result


# ---------------------------------------------------------------- refusals


def challenge_params(value: str) -> dict[str, str]:
    """The auth-params of one `Bearer` challenge (RFC 6750 §3)."""
    assert value.startswith("Bearer "), value
    params = {}
    for part in value[len("Bearer "):].split(","):
        name, _, quoted = part.strip().partition("=")
        assert quoted.startswith('"') and quoted.endswith('"'), value
        params[name] = quoted[1:-1]
    return params


async def refusals(mcp_url: str, resource: str, metadata_url: str, provider: Provider) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "0"}}}
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    cases = [
        ("no token", None, 401),
        ("another audience", provider.mint(aud="http://127.0.0.1:1/mcp", scope="invoke"), 401),
        ("expired", provider.mint(aud=resource, scope="invoke", exp_in=-3600), 401),
        ("without the invoke scope", provider.mint(aud=resource, scope="audit"), 403),
    ]
    for name, token, status in cases:
        headers = dict(base)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # One connection per request: a refusal may close it.
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.post(mcp_url, json=body, headers=headers)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert "www-authenticate" in r.headers, (name, dict(r.headers))
        params = challenge_params(r.headers["www-authenticate"])
        assert params.get("resource_metadata") == metadata_url, (name, params)
        assert params.get("scope") == "invoke", (name, params)
        if status == 403:
            assert params.get("error") == "insufficient_scope", (name, params)
            assert r.json()["error"]["code"] == "insufficient_scope", (name, r.text)
            assert "invoke" in r.text, (name, r.text)
        else:
            assert params.get("error") != "insufficient_scope", (name, params)
        if token:
            assert token not in r.text, f"the refusal of the token ({name}) repeats it"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection without sending a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection in the middle of a response")
        body += chunk
    return status, headers, body


def refusal_keeps_connection(port: int) -> None:
    """After the 401 on /mcp, the SDK's OAuth client asks for the metadata
    on the same (keep-alive) connection. A server may close a connection
    after a response only if the response says so with `Connection: close`
    (RFC 9112 §9.6); otherwise the next request on it must be answered.
    The refused request's body is sent just after its headers, in a TCP
    segment of its own, as HTTP clients often send it."""
    body = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
            b'"capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}')
    host = f"127.0.0.1:{port}".encode()
    post = (b"POST /mcp HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n")
    get = b"GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(post)
        time.sleep(0.02)
        s.sendall(body)
        status, headers, _ = read_response(s)
        assert status == 401, status
        if "close" in headers.get("connection", "").lower():
            return  # the client knows to open a new connection
        try:
            s.sendall(get)
            status, _, _ = read_response(s)
        except OSError as e:
            raise AssertionError(
                "after a 401 on /mcp without `Connection: close`, the next request on the same "
                f"connection was not answered ({e}): the SDK's OAuth client, which asks for the "
                "metadata on that connection, fails with `Server disconnected without sending a "
                "response`") from None
        assert status == 200, status


# ---------------------------------------------------------------- the test


def wait_healthy(base: str, proc: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    with open(log) as f:
        sys.stderr.write(f.read())
    raise SystemExit("switchboard serve did not become healthy")


def wait_keys(base: str, token: str) -> None:
    """Until the keys of jwks_url have arrived (fetched in the background
    after start): a valid JWT on a route every caller may use."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        req = urllib.request.Request(base + "/v1/agents", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=2):
                return
        except urllib.error.HTTPError as e:
            if e.code != 401 or time.monotonic() > deadline:
                raise SystemExit(f"a valid JWT is still refused: {e.code} {e.read()!r}")
        time.sleep(0.05)


def admin(base: str, token: str, method: str, path: str, body: bytes) -> None:
    req = urllib.request.Request(base + path, method=method, data=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status in (200, 201), r.status


async def scenario(base: str, resource: str, provider: Provider, as_seen: list, agent_seen: list) -> None:
    mcp_url = base + "/mcp"
    metadata_url = base + "/.well-known/oauth-protected-resource/mcp"

    # The protected resource metadata (RFC 9728), without a credential, at
    # the path-suffixed URL and the bare one.
    async with httpx2.AsyncClient(timeout=10) as http:
        for url in (metadata_url, base + "/.well-known/oauth-protected-resource"):
            r = await http.get(url)
            assert r.status_code == 200, (url, r.status_code, r.text)
            prm = r.json()
            assert prm["resource"] == resource, prm
            assert prm["authorization_servers"] == [provider.issuer], prm
            assert "invoke" in prm["scopes_supported"], prm

    await refusals(mcp_url, resource, metadata_url, provider)

    # The SDK's OAuth client, given nothing but the /mcp URL.
    storage, browser = MemoryStorage(), Browser()
    before = len(as_seen)
    await list_and_call(mcp_url, oauth_client(mcp_url, storage, browser), "legacy")
    paths = [path for _, path, _ in as_seen[before:]]
    for step in ("/.well-known/oauth-authorization-server", "/register", "/authorize", "/token"):
        assert step in paths, (step, paths)
    assert len(provider.clients) == 1 and len(provider.issued) == 1, (provider.clients, provider.issued)
    [request] = provider.authorize_requests
    assert request.resource == resource, request  # RFC 8707, from the metadata
    assert browser.visited[0].startswith(provider.issuer.rstrip("/") + "/authorize?"), browser.visited
    token = storage.tokens.access_token
    assert token == provider.issued[0]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == resource and claims["iss"] == provider.issuer, claims
    # The scope the 401 challenge named, not every scope the metadata lists.
    assert claims["scope"] == "invoke", claims

    # Another session with the stored token: no new registration or token.
    await list_and_call(mcp_url, oauth_client(mcp_url, storage, Browser()), "2026-07-28")
    assert len(provider.clients) == 1 and len(provider.issued) == 1, "the stored token was not reused"

    # The caller's token never reaches the agent.
    assert agent_seen, "the MCP agent was never called"
    leaked = [(m, p) for m, p, auth in agent_seen if auth is not None]
    assert not leaked, f"the agent received an Authorization header: {leaked}"


def main() -> int:
    binary = sys.argv[1]
    admin_token = secrets.token_hex(16)
    started: list[InThread] = []
    serve = None
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "serve.log")
        try:
            auth_server, provider, as_seen = authorization_server()
            started.append(auth_server.start())
            agent, agent_seen = upstream()
            started.append(agent.start())

            port = free_port()
            base = f"http://127.0.0.1:{port}"
            resource = f"{base}/mcp"
            config = os.path.join(tmp, "switchboard.toml")
            with open(config, "w") as f:
                f.write(f'[auth]\nresource = "{resource}"\n\n'
                        f'[auth.jwt]\nissuer = "{provider.issuer}"\naudience = "{resource}"\n'
                        f'jwks_url = "{auth_server.url}/jwks.json"\n')
            env = dict(os.environ, SWITCHBOARD_TOKEN=admin_token, RUST_LOG="warn")
            with open(log_path, "w") as log:
                serve = subprocess.Popen(
                    [binary, "serve", "--config", config, "--data", os.path.join(tmp, "db"),
                     "--listen", f"127.0.0.1:{port}"],
                    env=env, stdout=log, stderr=subprocess.STDOUT)
            wait_healthy(base, serve, log_path)
            wait_keys(base, provider.mint(aud=resource, scope="invoke"))
            assert any(path == "/jwks.json" for _, path, _ in as_seen), "Switchboard never fetched the JWKS"
            admin(base, admin_token, "PUT", "/v1/agents/weather",
                  f'{{"tools": ["web"], "mcp": "{agent.url}/mcp"}}'.encode())

            asyncio.run(asyncio.wait_for(scenario(base, resource, provider, as_seen, agent_seen),
                                         timeout=FLOW_TIMEOUT))
            refusal_keeps_connection(port)
        except BaseException:
            if os.path.exists(log_path) and os.path.getsize(log_path):
                with open(log_path) as f:
                    sys.stderr.write("switchboard serve's log:\n" + f.read())
            raise
        finally:
            if serve is not None:
                serve.terminate()
                try:
                    serve.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    serve.kill()
                    serve.wait(timeout=10)
            for server in reversed(started):
                server.stop()
    print("mcp oauth e2e: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
