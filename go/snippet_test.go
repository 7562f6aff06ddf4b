package switchboard_test

// The listing of docs/go.md (the Go surface issue 28 specifies), run as
// written against HTTP agents on 127.0.0.1:8001 and :8002 in a temporary
// working directory; then the state it left is checked.
// TestListingIsDocumented keeps the listing and the document the same.

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	switchboard "example.org/switchboard/go"
)

const regoSource = `package snippet.guard

import rego.v1

deny contains msg if {
	input.op == "put"
	input.context.tool == "forbidden"
	msg := "the forbidden tool is off limits"
}
`

func TestGoAPIListing(t *testing.T) {
	codeAgent := startAgent(t, "127.0.0.1:8001", func(c call) interface{} {
		return map[string]interface{}{"ran": c.Tool, "by": "code_agent"}
	})
	startAgent(t, "127.0.0.1:8002", func(c call) interface{} {
		return map[string]interface{}{"found": c.Input, "by": "search_agent"}
	})
	chdir(t, t.TempDir())
	ctx := context.Background()
	input1 := map[string]interface{}{"message": "Write a function"}
	input2 := map[string]interface{}{"message": "Now test it"}

	// BEGIN LISTING
	db, err := switchboard.Open("./agent_data")
	defer db.Close()
	dispatcher := switchboard.NewToolDispatcher(db) // loads persisted registrations

	err = dispatcher.RegisterAgent("code_agent",
		switchboard.WithTools(switchboard.CategoryCode, switchboard.CategoryShell),
		switchboard.WithEndpoint("http://localhost:8001/invoke"),
		switchboard.WithPriority(10),
	)
	err = dispatcher.RegisterAgent("search_agent",
		switchboard.WithTools(switchboard.CategorySearch, switchboard.CategoryWeb),
		switchboard.WithEndpoint("http://localhost:8002/invoke"),
	)

	result, err := dispatcher.Invoke(context.Background(), "code_exec", switchboard.CategoryCode,
		map[string]interface{}{"code": "print('hello')"},
		switchboard.WithStrategy(switchboard.StrategyLeastLoaded),
	)
	// result.InvocationID, result.AgentID, result.Output (map[string]any or json.RawMessage),
	// result.Attempts, result.LatencyMs

	// sticky sessions
	r1, _ := dispatcher.Invoke(ctx, "chat", switchboard.CategoryCode, input1, switchboard.WithSessionID("session_abc123"))
	r2, _ := dispatcher.Invoke(ctx, "chat", switchboard.CategoryCode, input2, switchboard.WithSessionID("session_abc123"))

	agents, _ := switchboard.NewToolDispatcher(db).ListAgents() // persisted

	dispatcher.EnableHealthChecks(switchboard.HealthChecks{Interval: 30 * time.Second,
		Timeout: 5 * time.Second, UnhealthyThreshold: 3})

	for _, s := range dispatcher.GetMetrics() {
		_ = s.Total
		_ = s.SuccessRate
		_ = s.AvgLatencyMs
		_ = s.ActiveTasks
	}

	// in-process agents: a Go function
	dispatcher.RegisterLocalAgent("local_code",
		func(ctx context.Context, tool string, input map[string]any) (map[string]any, error) {
			return map[string]any{"output": "ran " + tool}, nil
		}, switchboard.WithTools(switchboard.CategoryCode))

	// policy hooks in Go, and Rego
	policy := switchboard.NewPolicyEngine(db)
	policy.BeforeWrite("tools/sensitive/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		if c["agent_id"] != "trusted_agent_1" {
			return switchboard.Deny
		}
		return switchboard.Allow
	})
	policy.AddRego("tools/**", regoSource)

	// audit
	it := db.Scan("tools/code/code_exec/")
	for it.Next() {
		_ = it.Key()
		_ = it.Value()
	}
	err = it.Err()
	// END LISTING

	if err != nil {
		t.Fatalf("the listing's last error: %v", err)
	}
	if result == nil || result.AgentID != "code_agent" || decode(t, result.Output)["ran"] != "code_exec" {
		t.Fatalf("result: %+v", result)
	}
	if r1 == nil || r2 == nil || r1.AgentID != r2.AgentID {
		t.Fatalf("the session's calls went to %+v and %+v", r1, r2)
	}
	if strings.Join(agents, ",") != "code_agent,search_agent" {
		t.Fatalf("a second dispatcher listed %v", agents)
	}
	if got := len(codeAgent.received()); got != 3 {
		t.Fatalf("code_agent received %d calls, want 3", got)
	}
	// Every name the listing set up is live: the local agent, both hooks.
	sensitive := switchboard.Category("sensitive")
	if err := dispatcher.RegisterLocalAgent("helper", echo("helper"), switchboard.WithTools(sensitive)); err != nil {
		t.Fatal(err)
	}
	if _, err := dispatcher.Invoke(ctx, "wipe", sensitive, nil); !errors.Is(err, switchboard.ErrPolicyDenied) {
		t.Fatalf("an untrusted sensitive call: %v", err)
	}
	if _, err := dispatcher.Invoke(ctx, "forbidden", switchboard.CategoryCode, nil); !errors.Is(err, switchboard.ErrPolicyDenied) {
		t.Fatalf("the Rego module let a forbidden call through: %v", err)
	}
	// local_code (priority 0) stands by behind code_agent (priority 10).
	if err := dispatcher.UnregisterAgent("code_agent"); err != nil {
		t.Fatal(err)
	}
	r, err := dispatcher.Invoke(ctx, "code_exec", switchboard.CategoryCode, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out := decode(t, r.Output); r.AgentID != "local_code" || out["output"] != "ran code_exec" {
		t.Fatalf("%s answered %v", r.AgentID, out)
	}
	// The audit the listing scanned holds the first call's record.
	records := scanKeys(t, db, "tools/code/code_exec/")
	if len(records) != 2 || !strings.HasSuffix(records[0], "/"+result.InvocationID) {
		t.Fatalf("audit keys %v (first call %s)", records, result.InvocationID)
	}
}

// echo is a local agent answering {"agent": id, "echo": input}.
func echo(id string) switchboard.Handler {
	return func(ctx context.Context, tool string, input map[string]any) (map[string]any, error) {
		return map[string]any{"agent": id, "echo": input}, nil
	}
}

// scanKeys lists the keys under prefix.
func scanKeys(t *testing.T, db *switchboard.Database, prefix string) []string {
	t.Helper()
	var keys []string
	it := db.Scan(prefix)
	for it.Next() {
		keys = append(keys, it.Key())
	}
	if err := it.Err(); err != nil {
		t.Fatalf("scan %s: %v", prefix, err)
	}
	return keys
}

// chdir moves the test into dir (Go 1.19 has no t.Chdir).
func chdir(t *testing.T, dir string) {
	t.Helper()
	old, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chdir(old) })
}

// TestListingIsDocumented checks that docs/go.md's listing, past its import
// block, is the one TestGoAPIListing runs (gofmt's layout aside).
func TestListingIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/go.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	start := strings.Index(text, "```go\n")
	end := strings.Index(text[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatal("docs/go.md has no ```go listing")
	}
	listing := text[start+6 : start+6+end]
	if i := strings.Index(listing, ")\n"); strings.HasPrefix(listing, "import (") && i > 0 {
		listing = listing[i+2:]
	}
	src, err := os.ReadFile("snippet_test.go")
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	body = body[strings.Index(body, "// BEGIN LISTING")+len("// BEGIN LISTING") : strings.Index(body, "// END LISTING")]
	if a, b := squash(listing), squash(body); a != b {
		t.Fatalf("docs/go.md's listing and TestGoAPIListing differ:\n--- docs\n%s\n--- test\n%s", a, b)
	}
}

// squash drops whitespace and semicolons, which gofmt lays out anew.
func squash(s string) string {
	return strings.NewReplacer(" ", "", "\t", "", "\n", "", ";", "").Replace(s)
}

// TestQuickStart runs examples/quick_start.go as README says.
func TestQuickStart(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	out, err := exec.Command(gobin, "run", "../examples/quick_start.go").CombinedOutput()
	if err != nil {
		t.Fatalf("go run ../examples/quick_start.go: %v\n%s", err, out)
	}
	for _, want := range []string{"session_abc123: search_agent", "denied: every candidate was denied: local_code: local_code is not trusted", "succeeded code_agent"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("the quick start printed no %q:\n%s", want, out)
		}
	}
}
