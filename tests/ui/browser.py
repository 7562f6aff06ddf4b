"""The admin UI in a real browser: headless Chromium (Debian's package),
driven through chromedriver by Selenium, against a real `switchboard serve`
on a temporary database with two real HTTP agents on 127.0.0.1.

The steps share one server and run in order, as a person would: sign in,
see both agents, watch a call made through the API arrive in the live
view, find it by search and open its record, change a stored policy so the
next call is denied and find the denial in the decision log, revoke a token
and see its next request refused; then an invoke-only caller, who gets no
tokens page and no policy editor; then a narrow window. Last, an MCP agent
(tests/mcp/upstream_server.py on the `mcp` SDK) whose tool changes its
description shows on the tools page with its schema and history, and a
cluster of two more nodes on a real etcd shows on the overview, first
agreeing on their policies and then not.

Run by scripts/ui-test with the binary's path. With SCREENSHOTS=DIR, each
page's screenshot is saved there (docs/ui/ holds the ones docs/ui.md shows).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selenium.common.exceptions import StaleElementReferenceException
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

STATIC_TOKEN = "ui-test-static-token"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
# How long a page may take to show what a step waits for: a deadline for a
# stuck page, not a measure of speed.
PATIENCE = 30

GATE_OPEN = """# scope: tools/**
# ops: put
package switchboard.gate

import rego.v1

deny contains msg if {
\tinput.context.tool == "nothing_is_closed_yet"
\tmsg := "closed"
}
"""

GATE_CLOSED = GATE_OPEN.replace("nothing_is_closed_yet", "ui_probe").replace(
    '"closed"', '"ui_probe is closed by the gate"'
)

GATE_TESTS = """package switchboard.gate_test

import rego.v1

import data.switchboard.gate

test_ui_probe_is_closed if {
    count(gate.deny) == 1 with input as {"context": {"tool": "ui_probe"}}
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent(BaseHTTPRequestHandler):
    """A Switchboard HTTP agent that echoes its call."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = json.dumps({"agent": self.server.name, "tool": body["tool"], "echo": body["input"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_agent(name: str) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/invoke"


class Api:
    """The HTTP API, as a client other than the browser."""

    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, token: str, body=None, headers=None):
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def issue(self, name: str, scopes: list[str]) -> dict:
        status, body = self.call("POST", "/v1/tokens", STATIC_TOKEN, {"name": name, "scopes": scopes})
        assert status == 201, body
        return body


class Run:
    def __init__(self, binary: str):
        self.binary = binary
        self.shots = os.environ.get("SCREENSHOTS")
        self.data = tempfile.mkdtemp(prefix="switchboard-ui-test-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = Api(self.base)
        self.browser = None
        self.agents = []
        self.processes = {}
        self.state = {}

    # --- set-up and tear-down -------------------------------------------

    def start(self):
        self.spawn("serve", self.serve_command(self.port, "db"))
        self.until_up("serve", self.base + "/healthz")
        for name in ["alpha", "beta"]:
            server, endpoint = start_agent(name)
            self.agents.append(server)
            status, body = self.api.call("PUT", f"/v1/agents/{name}", STATIC_TOKEN, {"tools": ["code"], "endpoint": endpoint})
            assert status == 200, body
        status, body = self.api.call("PUT", "/v1/policies/gate", STATIC_TOKEN, {"source": GATE_OPEN})
        assert status == 201, body
        self.state["admin"] = self.api.issue("ui-admin", ["admin"])
        self.state["invoker"] = self.api.issue("ui-invoker", ["invoke"])
        self.state["victim"] = self.api.issue("ui-victim", ["invoke"])
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800", "--lang=en-GB"]:
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.downloads = os.path.join(self.data, "downloads")
        options.add_experimental_option("prefs", {"download.default_directory": self.downloads})
        service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
        self.browser = webdriver.Chrome(service=service, options=options)

    def stop(self):
        if self.browser:
            self.browser.quit()
        for agent in self.agents:
            agent.shutdown()
        for name in list(self.processes):
            self.end(name)
        subprocess.run(["rm", "-rf", self.data], check=False)

    def serve_command(self, port: int, data: str, *extra: str) -> list[str]:
        return [self.binary, "serve", "--data", os.path.join(self.data, data), "--listen", f"127.0.0.1:{port}", *extra]

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        """Starts a process the run stops at its end; its output goes to a log
        in the run's directory, printed if it never comes up."""
        log = open(os.path.join(self.data, f"{name}.log"), "w")
        env = dict(os.environ, SWITCHBOARD_TOKEN=STATIC_TOKEN, RUST_LOG="warn")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = (process, log)
        return process

    def end(self, name: str):
        process, log = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

    def until_up(self, name: str, url: str):
        process = self.processes[name][0]
        for _ in range(600):
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # It answers: an MCP endpoint refuses a bare GET.
            except OSError:
                if process.poll() is not None:
                    break
                time.sleep(0.05)
        with open(os.path.join(self.data, f"{name}.log")) as f:
            raise SystemExit(f"{name} did not come up at {url}:\n{f.read()[-3000:]}")

    # --- helpers -----------------------------------------------------------

    def wait(self, what, condition):
        # The live pages redraw (the overview every few seconds): an element
        # read between its lookup and its text may have been replaced, which
        # is a reason to look again, not a failure.
        try:
            return WebDriverWait(
                self.browser, PATIENCE, ignored_exceptions=(StaleElementReferenceException,)
            ).until(lambda _: condition())
        except Exception as e:
            raise AssertionError(f"the page never showed {what}: {self.browser.current_url}\n{self.text()[:2000]}") from e

    def text(self) -> str:
        return self.browser.find_element(By.TAG_NAME, "body").text

    def find(self, css):
        return self.browser.find_elements(By.CSS_SELECTOR, css)

    def texts(self, css):
        """The text of each element `css` selects, read again if the page
        redrew between the lookup and the reading."""
        for _ in range(4):
            try:
                return [e.text for e in self.find(css)]
            except StaleElementReferenceException:
                continue
        return [e.text for e in self.find(css)]

    def open(self, path: str):
        self.browser.get(self.base + path)

    def shot(self, name: str):
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            self.browser.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def nav(self) -> list[str]:
        return [a.text for a in self.find("nav a")]

    def sign_in(self, secret: str, base: str | None = None):
        self.browser.get((base or self.base) + "/ui/")
        field = self.wait("the sign-in form", lambda: self.find("#credential"))[0]
        field.send_keys(secret)
        field.send_keys(Keys.ENTER)
        self.wait("the navigation", lambda: self.find("nav a"))

    def invoke(self, tool: str, token: str):
        return self.api.call(
            "POST",
            "/v1/invoke",
            token,
            {"tool": tool, "category": "code", "input": {"city": "Oslo"}},
            {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
        )

    # --- the steps ---------------------------------------------------------

    def step_sign_in(self):
        """Signs in with a token; the credential is in no address and no script can read it."""
        self.open("/ui/")
        self.wait("the sign-in form", lambda: self.find("#credential"))
        self.shot("sign-in")
        secret = self.state["admin"]["secret"]
        self.sign_in(secret)
        assert self.nav() == ["Overview", "Tools", "Live calls", "Audit", "Policies", "Tokens"], self.nav()
        assert secret not in self.browser.current_url
        assert secret not in self.browser.execute_script("return document.cookie"), "the cookie is HttpOnly"
        assert self.state["admin"]["token"]["caller"] in self.text()

    def step_overview_shows_two_agents(self):
        """The overview lists both agents, healthy, with their category."""
        rows = lambda: self.texts("#agents tbody tr")
        self.wait("two agents", lambda: len(rows()) == 2)
        assert rows()[0].startswith("alpha") and rows()[1].startswith("beta"), rows()
        assert all("healthy" in r and "code" in r for r in rows()), rows()
        assert all("no calls yet" in r for r in rows()), rows()
        for _ in range(6):
            status, answer = self.invoke("warm_up", self.state["invoker"]["secret"])
            assert status == 200, answer
        # Round robin: three calls each; the chart draws the samples since.
        self.wait("three calls per agent", lambda: all("100.0% of 3" in r for r in rows()))
        points = lambda: [len(p.get_attribute("points").split()) for p in self.find("#agents svg.chart polyline.p50")]
        self.wait("latency charts of a few samples", lambda: len(points()) == 2 and min(points()) >= 3)
        self.shot("overview")

    def step_a_call_appears_in_the_live_view(self):
        """A call made through the API appears in the live view as it completes."""
        self.find("nav a[href='/ui/calls']")[0].click()
        self.wait("a connected stream", lambda: self.find("#stream-state[data-state='open']"))
        status, answer = self.invoke("ui_probe", self.state["invoker"]["secret"])
        assert status == 200, answer
        row = self.wait("the call", lambda: self.find("#live-rows tr[data-key^='tools/code/ui_probe/']"))[0]
        assert "succeeded" in row.text and self.state["invoker"]["token"]["caller"] in row.text, row.text
        self.state["key"] = row.get_attribute("data-key")
        self.shot("live-calls")

    def step_search_finds_it_and_opens_its_record(self):
        """The audit search finds the call by caller and tool and exports it as JSON lines; its record shows arguments, attempts and trace id."""
        self.find("nav a[href='/ui/audit']")[0].click()
        prefix = self.wait("the search form", lambda: self.find("#audit-prefix"))[0]
        prefix.clear()
        prefix.send_keys("tools/code/ui_probe/")
        self.find("#audit-caller")[0].send_keys(self.state["invoker"]["token"]["caller"])
        self.find("#audit-status option[value='succeeded']")[0].click()
        self.find("#audit-form button[type='submit']")[0].click()
        key = self.state["key"]
        href = "/ui/record?key=" + urllib.parse.quote(key, safe="")
        link = self.wait("the call in the results", lambda: self.find(f"#audit-results a[href='{href}']"))
        assert len(self.find("#audit-results tbody tr")) == 1, self.text()
        self.shot("audit")
        self.find("#audit-export")[0].click()
        self.wait("the export", lambda: "Exported 1 record." in self.text())
        export = os.path.join(self.downloads, "switchboard-audit.jsonl")
        self.wait("the downloaded file", lambda: os.path.exists(export))
        with open(export) as f:
            lines = [json.loads(line) for line in f]
        assert [line["key"] for line in lines] == [key], lines
        assert lines[0]["value"]["trace_id"] == TRACE_ID, lines
        link[0].click()
        self.wait("the record", lambda: self.find("#record-key") and self.find("#record-key")[0].text == key)
        self.wait("its attempts", lambda: "Attempts" in self.text())
        body = self.text()
        for expected in [TRACE_ID, "ui_probe", '"city": "Oslo"', "succeeded", self.state["invoker"]["token"]["caller"]]:
            assert expected in body, f"{expected} not on the record page:\n{body}"
        assert "alpha" in body or "beta" in body
        self.shot("record")

    def step_tools_lists_the_category_and_who_serves_it(self):
        """The tools page lists the code category, served by both agents."""
        self.open("/ui/tools")
        self.wait("the categories", lambda: "alpha, beta" in self.text())

    def step_a_policy_edit_denies_the_next_call(self):
        """Editing the stored policy (checked, with its tests, before it is saved) denies the next call; the decision log shows why."""
        self.open("/ui/policies")
        self.wait("the stored policy", lambda: self.find("a[href='/ui/policies/gate']"))[0].click()
        source = self.wait("the editor", lambda: self.find("#policy-source"))[0]
        assert self.find("#policy-revision")[0].text == "1"
        self.browser.execute_script("arguments[0].value = arguments[1]", source, GATE_CLOSED)
        self.find("#policy-tests")[0].send_keys(GATE_TESTS)
        self.find("#policy-save")[0].click()
        self.wait("the saved revision", lambda: "Saved: revision 2" in self.text())
        assert "test_ui_probe_is_closed" in self.text() and "passed" in self.text()
        self.browser.execute_script("document.getElementById('policy-result').scrollIntoView({block: 'end'})")
        self.shot("policy-editor")
        status, answer = self.invoke("ui_probe", self.state["invoker"]["secret"])
        assert status == 403 and answer["error"]["code"] == "policy_denied", (status, answer)
        self.open("/ui/policies")
        self.wait("the decision form", lambda: self.find("#decision-kind option[value='deny']"))[0].click()
        self.find("#decision-form button[type='submit']")[0].click()
        self.wait("the denial", lambda: "ui_probe is closed by the gate" in self.find("#decision-results")[0].text)
        self.shot("policies")

    def step_a_revoked_token_is_refused(self):
        """A token revoked on the tokens page is refused on its next request; a new one's secret is shown once."""
        victim = self.state["victim"]
        assert self.api.call("GET", "/v1/agents", victim["secret"])[0] == 200
        self.open("/ui/tokens")
        button = self.wait("the victim's revoke button", lambda: self.find(f"button[data-token='{victim['token']['token_id']}']"))[0]
        button.click()
        self.browser.switch_to.alert.accept()
        self.wait("the revocation", lambda: "Revoked ui-victim" in self.text())
        status, answer = self.api.call("GET", "/v1/agents", victim["secret"])
        assert status == 401, (status, answer)
        self.find("#token-name")[0].send_keys("made-in-the-ui")
        self.find("#scope-audit")[0].click()
        self.find("#token-create")[0].click()
        secret = self.wait("the new secret", lambda: self.find("#token-secret"))[0].text
        assert self.api.call("GET", "/v1/scan?prefix=tools/", secret)[0] == 200
        self.shot("tokens")
        self.open("/ui/tokens")
        self.wait("the token list", lambda: "made-in-the-ui" in self.text())
        assert secret not in self.browser.page_source, "a secret is shown once"

    def step_an_invoke_only_token_gets_no_tokens_page_and_no_editor(self):
        """An invoke-only caller's navigation has no Tokens or Policies page, and their addresses show no form."""
        self.find("#sign-out")[0].click()
        self.wait("the sign-in form", lambda: self.find("#credential"))
        self.sign_in(self.state["invoker"]["secret"])
        assert self.nav() == ["Overview", "Tools"], self.nav()
        self.open("/ui/tokens")
        self.wait("the refusal", lambda: "needs the admin scope" in self.text())
        assert not self.find("#token-form") and not self.find("#token-list")
        self.open("/ui/policies/gate")
        self.wait("the refusal", lambda: "needs the admin or audit scope" in self.text())
        assert not self.find("#policy-source") and not self.find("#policy-save")
        self.open("/ui/")
        self.wait("the agents", lambda: len(self.find("#agents tbody tr")) == 2)
        assert "need the audit scope" in self.text()

    def step_keyboard_and_a_narrow_window(self):
        """The first Tab reaches the skip link; a narrow window wraps instead of scrolling sideways."""
        self.open("/ui/")
        self.wait("the agents", lambda: len(self.find("#agents tbody tr")) == 2)
        ActionChains(self.browser).send_keys(Keys.TAB).perform()
        focused = self.browser.switch_to.active_element
        assert focused.get_attribute("class") == "skip", focused.get_attribute("outerHTML")
        self.find("#sign-out")[0].click()
        self.wait("the sign-in form", lambda: self.find("#credential"))
        self.browser.set_window_size(420, 900)
        self.sign_in(self.state["admin"]["secret"])
        self.wait("the agents", lambda: len(self.find("#agents tbody tr")) == 2)
        overflow = self.browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a narrow window"
        self.shot("narrow")

    def step_tools_shows_an_mcp_tool_with_its_schema_and_history(self):
        """An MCP agent's tool shows with its schema; after the server changes its description, the old one shows as history."""
        self.browser.set_window_size(1280, 800)
        port = free_port()
        registration = {"tools": ["search"], "mcp": f"http://127.0.0.1:{port}/mcp"}
        for description in ["The forecast for a city, as first published.", "The forecast for a city, now with wind."]:
            self.start_mcp_agent(port, description)
            status, body = self.api.call("PUT", "/v1/agents/weather", STATIC_TOKEN, registration)
            assert status == 200, body
        self.open("/ui/tools")
        row = lambda: [r for r in self.find("[aria-label='MCP tools'] tbody tr") if "forecast" in r.text]
        self.wait("the MCP tool with its new description", lambda: row() and "now with wind" in row()[0].text)
        text = row()[0].text
        for expected in ["weather", "search", "changed; before:", "as first published", "first seen"]:
            assert expected in text, f"{expected} not in the MCP tool's row: {text}"
        row()[0].find_element(By.TAG_NAME, "summary").click()
        self.wait("the schema", lambda: '"city"' in row()[0].text and '"string"' in row()[0].text)
        self.shot("tools")
        self.end("mcp-agent")

    def start_mcp_agent(self, port: int, description: str):
        if "mcp-agent" in self.processes:
            self.end("mcp-agent")
        script = os.path.join(os.path.dirname(__file__), "..", "mcp", "upstream_server.py")
        self.spawn("mcp-agent", [sys.executable, script, "http", str(port), description])
        self.until_up("mcp-agent", f"http://127.0.0.1:{port}/mcp")

    def step_overview_shows_the_cluster_and_a_policy_disagreement(self):
        """Two nodes on a real etcd: the overview lists both, agreeing on their policies, then says they disagree once one stores a policy."""
        client, peer = free_port(), free_port()
        etcd = f"http://127.0.0.1:{client}"
        self.spawn("etcd", [
            "etcd", "--name", "ui", "--data-dir", os.path.join(self.data, "etcd"),
            "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"ui=http://127.0.0.1:{peer}",
        ])
        self.until_up("etcd", etcd + "/health")
        nodes = []
        for name in ["node1", "node2"]:
            port = free_port()
            self.spawn(name, self.serve_command(port, name, "--cluster-etcd", etcd, "--node-id", name))
            nodes.append(f"http://127.0.0.1:{port}")
            self.until_up(name, nodes[-1] + "/healthz")
        self.sign_in(STATIC_TOKEN, nodes[1])
        rows = lambda: self.texts("#cluster tbody tr")
        self.wait("both nodes, agreeing", lambda: len(rows()) == 2 and "every node agrees" in self.find("#cluster")[0].text)
        assert rows()[0].startswith("node1") and rows()[1].startswith("node2"), rows()
        assert "This node: node2" in self.find("#cluster")[0].text
        status, body = Api(nodes[0]).call("PUT", "/v1/policies/gate", STATIC_TOKEN, {"source": GATE_OPEN})
        assert status == 201, body
        self.wait("the disagreement", lambda: "nodes disagree" in self.find("#cluster")[0].text)
        self.browser.execute_script("document.getElementById('cluster').scrollIntoView({block: 'end'})")
        self.shot("cluster")

    def step_no_policy_violation_in_the_console(self):
        """The browser reported no Content-Security-Policy violation and no script error."""
        problems = [
            e["message"]
            for e in self.browser.get_log("browser")
            if "Content Security Policy" in e["message"] or "Uncaught" in e["message"] or "Refused to" in e["message"]
        ]
        assert not problems, problems


def main() -> int:
    run = Run(sys.argv[1])
    steps = [getattr(Run, name) for name in Run.__dict__ if name.startswith("step_")]
    passed = failed = 0
    try:
        run.start()
        for step in steps:
            try:
                step(run)
                passed += 1
                print(f"ok: {step.__doc__.strip()}")
            except Exception:
                failed += 1
                print(f"FAILED: {step.__doc__.strip()}")
                traceback.print_exc()
                # The later steps build on this one.
                break
    finally:
        run.stop()
    skipped = len(steps) - passed - failed
    print(f"ui-test: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
