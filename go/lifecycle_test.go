package switchboard_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	switchboard "example.org/switchboard/go"
)

// TestCloseLeaksNothing uses every kind of handle the package makes (local
// agents, hooks, invokes completed inline and through the callback) and
// checks that after Close the handles are all released and no goroutine is
// left behind.
func TestCloseLeaksNothing(t *testing.T) {
	handlesBefore := switchboard.LiveHandles()
	goroutinesBefore := runtime.NumGoroutine()

	db, err := switchboard.Open(t.TempDir())
	must(t, err)
	d := switchboard.NewToolDispatcher(db)
	policy := switchboard.NewPolicyEngine(db)
	must(t, policy.BeforeWrite("tools/**", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		return switchboard.Allow
	}))
	must(t, policy.AfterRead("notes/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		return switchboard.Allow
	}))
	for _, id := range []string{"go_1", "go_2", "go_3"} {
		must(t, d.RegisterLocalAgent(id, echo(id), switchboard.WithTools(switchboard.CategoryCode)))
	}
	must(t, d.RegisterLocalAgent("go_1", echo("go_1 again"), switchboard.WithTools(switchboard.CategoryCode))) // replaces go_1
	must(t, d.UnregisterAgent("go_3"))
	must(t, d.BenchRegisterRustEcho("rust_inline", switchboard.CategoryDatabase, false))
	must(t, d.BenchRegisterRustEcho("rust_pending", switchboard.CategoryGit, true))
	started, stopped := make(chan string, 1), make(chan string, 1)
	must(t, d.RegisterLocalAgent("slow", blocking(started, stopped), switchboard.WithTools(switchboard.CategoryShell)))
	must(t, d.EnableHealthChecks(switchboard.HealthChecks{Interval: time.Second}))
	if got := switchboard.LiveHandles() - handlesBefore; got != 5 {
		t.Fatalf("%d handles live, want 5: 2 hooks, go_1, go_2 and slow (the replaced go_1 and the removed go_3 released)", got)
	}
	for _, c := range []switchboard.Category{switchboard.CategoryCode, switchboard.CategoryDatabase, switchboard.CategoryGit} {
		for i := 0; i < 10; i++ {
			_, err := d.Invoke(context.Background(), "t", c, map[string]any{"i": i})
			must(t, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := d.Invoke(ctx, "wait", switchboard.CategoryShell, nil)
		done <- err
	}()
	<-started
	cancel()
	<-done
	<-stopped
	must(t, db.Put("notes/x", []byte(`1`)))
	if _, _, err := db.Get("notes/x"); err != nil {
		t.Fatal(err)
	}
	must(t, db.Close())
	must(t, db.Close()) // twice is fine

	if got := switchboard.LiveHandles(); got != handlesBefore {
		t.Fatalf("%d handles live after Close, %d before", got, handlesBefore)
	}
	// Handler goroutines finish their last step after the call they
	// answered has returned: wait (bounded) for them to exit.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutinesBefore {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), goroutinesBefore, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTheCLISeesAGoRegistration: an agent registered from Go is listed by
// the Rust CLI (`switchboard agents list`) on the same database once the Go
// side has closed it.
func TestTheCLISeesAGoRegistration(t *testing.T) {
	bin := switchboardBin(t)
	data := filepath.Join(t.TempDir(), "db")
	db, err := switchboard.Open(data)
	must(t, err)
	d := switchboard.NewToolDispatcher(db)
	must(t, d.RegisterAgent("go_registered",
		switchboard.WithTools(switchboard.CategoryCode, switchboard.Category("reports")),
		switchboard.WithEndpoint("http://127.0.0.1:9/invoke"),
		switchboard.WithPriority(7)))
	must(t, db.Close())

	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "agents", "list", "--data", data, "--json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s agents list: %v\n%s", bin, err, stderr.String())
	}
	var row map[string]any
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("a line of agents list: %q: %v", sc.Text(), err)
		}
		if r["agent_id"] == "go_registered" || r["id"] == "go_registered" {
			row = r
		}
	}
	if row == nil {
		t.Fatalf("agents list printed %q", stdout.String())
	}
	text, _ := json.Marshal(row)
	if !strings.Contains(string(text), "reports") || !strings.Contains(string(text), "127.0.0.1:9") {
		t.Fatalf("the CLI's row: %s", text)
	}
}

// switchboardBin is the CLI of the workspace's dev build: $SWITCHBOARD_BIN,
// else debug/switchboard under $CARGO_TARGET_DIR or ../target.
func switchboardBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("SWITCHBOARD_BIN")
	if bin == "" {
		dir := os.Getenv("CARGO_TARGET_DIR")
		if dir == "" {
			dir = "../target"
		}
		bin = filepath.Join(dir, "debug", "switchboard")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the switchboard CLI is missing (%v): build it with cargo build --all-targets, or set SWITCHBOARD_BIN", err)
	}
	return bin
}

// TestCloseDuringACall: closing the database while a call is in flight,
// its hook reading the same database, waits for the call instead of
// deadlocking, and the call succeeds.
func TestCloseDuringACall(t *testing.T) {
	db, err := switchboard.Open(t.TempDir())
	must(t, err)
	must(t, db.Put("notes/x", []byte(`1`)))
	d := switchboard.NewToolDispatcher(db)
	must(t, d.BenchRegisterRustEcho("rust_echo", switchboard.CategoryCode, false))
	inHook, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var readErr error
	must(t, switchboard.NewPolicyEngine(db).BeforeWrite("tools/code/**", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		once.Do(func() {
			close(inHook)
			<-release
			_, _, readErr = db.Get("notes/x")
		})
		return switchboard.Allow
	}))
	invoked := make(chan error)
	go func() {
		_, err := d.Invoke(context.Background(), "t", switchboard.CategoryCode, nil)
		invoked <- err
	}()
	<-inHook
	closed := make(chan error)
	go func() { closed <- db.Close() }()
	close(release)
	must(t, <-invoked)
	must(t, <-closed)
	must(t, readErr)
	if err := d.Err(); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("the dispatcher after Close: %v", err)
	}
}
