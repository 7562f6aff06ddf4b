package switchboard_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	switchboard "example.org/switchboard/go"
)

func TestHTTPAndLocalAgents(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	web := startAgent(t, "127.0.0.1:0", func(c call) interface{} {
		return map[string]interface{}{"ran": c.Tool, "with": c.Input}
	})
	if err := d.RegisterAgent("web_agent", switchboard.WithTools(switchboard.CategoryWeb), switchboard.WithEndpoint(web.URL())); err != nil {
		t.Fatal(err)
	}
	r, err := d.Invoke(context.Background(), "fetch", switchboard.CategoryWeb, map[string]interface{}{"url": "x"})
	if err != nil {
		t.Fatal(err)
	}
	out := decode(t, r.Output)
	if r.AgentID != "web_agent" || out["ran"] != "fetch" || r.Attempts != 1 {
		t.Fatalf("got %+v %v", r, out)
	}
	if got := web.received(); len(got) != 1 || got[0].InvocationID != r.InvocationID {
		t.Fatalf("agent saw %+v", got)
	}
	err = d.RegisterLocalAgent("local", func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error) {
		return map[string]interface{}{"tool": tool, "echo": input}, nil
	}, switchboard.WithTools(switchboard.CategoryCode))
	if err != nil {
		t.Fatal(err)
	}
	r, err = d.Invoke(context.Background(), "run", switchboard.CategoryCode, map[string]interface{}{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if out := decode(t, r.Output); out["tool"] != "run" || r.AgentID != "local" {
		t.Fatalf("got %+v", out)
	}
	_, err = d.Invoke(context.Background(), "run", switchboard.CategoryGit, nil)
	if !errors.Is(err, switchboard.ErrNoAgentAvailable) {
		t.Fatalf("want ErrNoAgentAvailable, got %v", err)
	}
}

func TestThousandConcurrentInvokes(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	web := startAgent(t, "127.0.0.1:0", func(c call) interface{} {
		return map[string]interface{}{"i": c.Input["i"]}
	})
	must(t, d.RegisterAgent("http_agent", switchboard.WithTools(switchboard.CategoryWeb), switchboard.WithEndpoint(web.URL())))
	must(t, d.RegisterLocalAgent("go_agent", func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error) {
		return map[string]interface{}{"i": input["i"]}, nil
	}, switchboard.WithTools(switchboard.CategoryCode)))
	must(t, d.BenchRegisterRustEcho("rust_agent", switchboard.CategoryDatabase, false))

	const n = 1000
	categories := []switchboard.Category{switchboard.CategoryWeb, switchboard.CategoryCode, switchboard.CategoryDatabase}
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := d.Invoke(context.Background(), "t", categories[i%3], map[string]interface{}{"i": i})
			if err != nil {
				errs[i] = err
				return
			}
			var out map[string]interface{}
			if err := json.Unmarshal(r.Output, &out); err != nil || out["i"] != float64(i) {
				errs[i] = fmt.Errorf("call %d answered %s", i, r.Output)
			}
			ids[i] = r.InvocationID
		}(i)
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if seen[ids[i]] {
			t.Fatalf("invocation id %s twice", ids[i])
		}
		seen[ids[i]] = true
	}
	var total uint64
	for id, m := range d.GetMetrics() {
		if m.ActiveTasks != 0 || m.Failures != 0 {
			t.Fatalf("%s: %+v", id, m)
		}
		total += m.Total
	}
	if total != n || len(web.received()) != 334 {
		t.Fatalf("metrics count %d calls, the HTTP agent saw %d", total, len(web.received()))
	}
}

// blocking is a local agent that reports each call on started and answers
// only once its context is cancelled, reporting that on stopped.
func blocking(started, stopped chan<- string) switchboard.Handler {
	return func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error) {
		started <- tool
		<-ctx.Done()
		stopped <- tool
		return map[string]interface{}{"late": true}, nil
	}
}

func TestCancellingTheContextCancelsTheCall(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	started, stopped := make(chan string, 1), make(chan string, 1)
	must(t, d.RegisterLocalAgent("slow", blocking(started, stopped), switchboard.WithTools(switchboard.CategoryCode)))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := d.Invoke(ctx, "long_job", switchboard.CategoryCode, nil)
		done <- err
	}()
	<-started // the handler is running: the call is mid-flight
	cancel()
	err := <-done
	if !errors.Is(err, switchboard.ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("want ErrCancelled wrapping context.Canceled, got %v", err)
	}
	if tool := <-stopped; tool != "long_job" {
		t.Fatalf("the handler's context was cancelled for %s", tool)
	}
	// The audit trail, read back through Scan, says cancelled.
	keys := scanKeys(t, db, "tools/code/long_job/")
	if len(keys) != 1 {
		t.Fatalf("records %v", keys)
	}
	r := record(t, db, keys[0])
	if r["status"] != "cancelled" || r["agent_id"] != "slow" {
		t.Fatalf("record %v", r)
	}
	if m := d.GetMetrics()["slow"]; m.Cancelled != 1 || m.ActiveTasks != 0 {
		t.Fatalf("metrics %+v", m)
	}

	// A deadline cancels the same way, and says so.
	dl, cancelDl := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelDl()
	_, err = d.Invoke(dl, "deadline_job", switchboard.CategoryCode, nil)
	<-started
	<-stopped
	if !errors.Is(err, switchboard.ErrCancelled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want ErrCancelled wrapping DeadlineExceeded, got %v", err)
	}

	// A context already done calls and records nothing.
	_, err = d.Invoke(ctx, "never", switchboard.CategoryCode, nil)
	if !errors.Is(err, switchboard.ErrCancelled) {
		t.Fatalf("got %v", err)
	}
	if keys := scanKeys(t, db, "tools/code/never/"); len(keys) != 0 {
		t.Fatalf("a call cancelled before it started was recorded: %v", keys)
	}
}

func TestCancellingAnHTTPCall(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			return
		}
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer slow.Close()
	defer close(release)
	must(t, d.RegisterAgent("slow_http", switchboard.WithTools(switchboard.CategorySearch), switchboard.WithEndpoint(slow.URL+"/invoke")))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := d.Invoke(ctx, "query", switchboard.CategorySearch, map[string]interface{}{"q": "x"})
		done <- err
	}()
	<-arrived
	cancel()
	if err := <-done; !errors.Is(err, switchboard.ErrCancelled) {
		t.Fatalf("got %v", err)
	}
	keys := scanKeys(t, db, "tools/search/query/")
	if len(keys) != 1 || record(t, db, keys[0])["status"] != "cancelled" {
		t.Fatalf("records %v", keys)
	}
}

func TestHandlerFailures(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	must(t, d.RegisterLocalAgent("panicky", func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error) {
		panic("handler bug")
	}, switchboard.WithTools(switchboard.CategoryCode), switchboard.WithPriority(10)))
	must(t, d.RegisterLocalAgent("steady", echo("steady"), switchboard.WithTools(switchboard.CategoryCode)))

	// A panic is the agent's failure: the call fails over to the next tier.
	r, err := d.Invoke(context.Background(), "run", switchboard.CategoryCode, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.AgentID != "steady" || r.Attempts != 2 {
		t.Fatalf("got %+v", r)
	}
	rec := record(t, db, "tools/code/run/"+r.InvocationID)
	if !strings.Contains(fmt.Sprint(rec["attempts"]), "handler panicked: handler bug") {
		t.Fatalf("the record's attempts %v", rec["attempts"])
	}
	must(t, d.UnregisterAgent("steady"))
	_, err = d.Invoke(context.Background(), "run", switchboard.CategoryCode, nil)
	var e *switchboard.Error
	if !errors.Is(err, switchboard.ErrAgentFailed) || !errors.As(err, &e) || e.AgentID != "panicky" || !strings.Contains(e.AgentMessage, "handler bug") {
		t.Fatalf("got %#v", err)
	}

	// A returned error is the agent's failure too; a ToolError is the tool's, final.
	must(t, d.RegisterLocalAgent("tool_err", func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error) {
		return nil, switchboard.NewToolError("no such file")
	}, switchboard.WithTools(switchboard.CategoryFile), switchboard.WithPriority(10)))
	must(t, d.RegisterLocalAgent("backup", echo("backup"), switchboard.WithTools(switchboard.CategoryFile)))
	_, err = d.Invoke(context.Background(), "read", switchboard.CategoryFile, nil)
	if !errors.Is(err, switchboard.ErrToolFailed) || !errors.As(err, &e) || e.ToolMessage != "no such file" {
		t.Fatalf("got %v", err)
	}
	must(t, d.RegisterLocalAgent("agent_err", func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error) {
		return nil, errors.New("disk offline")
	}, switchboard.WithTools(switchboard.CategoryGit), switchboard.WithPriority(10)))
	must(t, d.RegisterLocalAgent("git_backup", echo("git_backup"), switchboard.WithTools(switchboard.CategoryGit)))
	if r, err := d.Invoke(context.Background(), "clone", switchboard.CategoryGit, nil); err != nil || r.AgentID != "git_backup" {
		t.Fatalf("got %+v, %v", r, err)
	}

	// A handler slower than its timeout: ErrTimeout, and its context is cancelled.
	started, stopped := make(chan string, 1), make(chan string, 1)
	must(t, d.RegisterLocalAgent("sleepy", blocking(started, stopped), switchboard.WithTools(switchboard.CategoryShell), switchboard.WithTimeout(100*time.Millisecond)))
	_, err = d.Invoke(context.Background(), "sleep", switchboard.CategoryShell, nil)
	if !errors.Is(err, switchboard.ErrTimeout) || !errors.As(err, &e) || e.Timeout != 100*time.Millisecond {
		t.Fatalf("got %v", err)
	}
	<-started
	<-stopped
}

func TestErrorsAreSentinels(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	var e *switchboard.Error
	err := d.UnregisterAgent("ghost")
	if !errors.Is(err, switchboard.ErrUnknownAgent) || !errors.As(err, &e) || e.AgentID != "ghost" {
		t.Fatalf("got %v", err)
	}
	if errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatal("one error matched two kinds")
	}
	_, err = d.Invoke(context.Background(), "t", switchboard.Category("not a category!"), nil)
	if !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("got %v", err)
	}
	_, err = d.Invoke(context.Background(), "t", switchboard.CategoryCode, nil, switchboard.WithStrategy("fastest_please"))
	if !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("got %v", err)
	}
	_, err = d.Invoke(context.Background(), "t", switchboard.CategoryCode, nil, switchboard.WithStrategy(switchboard.StrategySticky))
	if !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("sticky without a session: %v", err)
	}
	_, err = d.Invoke(context.Background(), "t", switchboard.CategoryCode, make(chan int))
	if !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("an input that is not JSON: %v", err)
	}
	err = d.RegisterAgent("bad_url", switchboard.WithTools(switchboard.CategoryCode), switchboard.WithEndpoint("not a url"))
	if !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("got %v", err)
	}
	_, err = d.Invoke(context.Background(), "t", switchboard.CategoryCode, nil)
	if !errors.Is(err, switchboard.ErrNoAgentAvailable) || !errors.As(err, &e) || e.Category != "code" {
		t.Fatalf("got %v", err)
	}
	if err := switchboard.NewPolicyEngine(db).AddRego("tools/**", "package broken\nthis is not rego"); !errors.Is(err, switchboard.ErrPolicyLoad) {
		t.Fatalf("got %v", err)
	}
	if err := d.EnableHealthChecks(switchboard.HealthChecks{Interval: -time.Second}); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("got %v", err)
	}
	if _, err := switchboard.Open(""); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("got %v", err)
	}
	db.Close()
	if err := d.RegisterAgent("late", switchboard.WithTools(switchboard.CategoryCode)); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("a closed dispatcher: %v", err)
	}
	if err := db.Put("k", []byte("{}")); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("a closed database: %v", err)
	}
	if err := switchboard.NewToolDispatcher(db).Err(); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("a dispatcher of a closed database: %v", err)
	}
}

func TestStickySessionsAndHealthChecks(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	var healthy int32 = 1
	mk := func(name string) *agent {
		a := &agent{}
		a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				if name == "b" && atomic.LoadInt32(&healthy) == 0 {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
				return
			}
			json.NewEncoder(w).Encode(map[string]string{"by": name})
		}))
		t.Cleanup(a.Close)
		return a
	}
	a, b := mk("a"), mk("b")
	must(t, d.RegisterAgent("a", switchboard.WithTools(switchboard.CategoryWeb), switchboard.WithEndpoint(a.URL())))
	must(t, d.RegisterAgent("b", switchboard.WithTools(switchboard.CategoryWeb), switchboard.WithEndpoint(b.URL())))
	first, err := d.Invoke(context.Background(), "chat", switchboard.CategoryWeb, nil, switchboard.WithSessionID("s1"))
	must(t, err)
	for i := 0; i < 5; i++ {
		r, err := d.Invoke(context.Background(), "chat", switchboard.CategoryWeb, nil, switchboard.WithSessionID("s1"), switchboard.WithStrategy(switchboard.StrategySticky))
		must(t, err)
		if r.AgentID != first.AgentID {
			t.Fatalf("session s1 moved from %s to %s", first.AgentID, r.AgentID)
		}
	}
	// b fails its probes: health checks mark it unhealthy.
	atomic.StoreInt32(&healthy, 0)
	must(t, d.EnableHealthChecks(switchboard.HealthChecks{Interval: 20 * time.Millisecond, Timeout: time.Second, UnhealthyThreshold: 1}))
	deadline := time.Now().Add(10 * time.Second)
	for d.GetMetrics()["b"].Healthy {
		if time.Now().After(deadline) {
			t.Fatal("b never became unhealthy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(t, d.DisableHealthChecks())
	for i := 0; i < 4; i++ {
		r, err := d.Invoke(context.Background(), "ping", switchboard.CategoryWeb, nil)
		must(t, err)
		if r.AgentID != "a" {
			t.Fatalf("an unhealthy agent was called: %+v", r)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestWaitingCallsHoldNoThread: 200 calls waiting on their agents at once
// do not hold 200 OS threads (a call blocking inside cgo would pin one).
func TestWaitingCallsHoldNoThread(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	const n = 200
	started, release := make(chan struct{}, n), make(chan struct{})
	must(t, d.RegisterLocalAgent("held", func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error) {
		started <- struct{}{}
		<-release
		return input, nil
	}, switchboard.WithTools(switchboard.CategoryCode)))
	before := osThreads(t)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			_, err := d.Invoke(context.Background(), "wait", switchboard.CategoryCode, map[string]interface{}{"i": i})
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		<-started
	}
	during := osThreads(t)
	t.Logf("%d OS threads before, %d with %d calls waiting", before, during, n)
	close(release)
	for i := 0; i < n; i++ {
		must(t, <-errs)
	}
	if during-before >= n/4 {
		t.Fatalf("%d OS threads with %d calls waiting, %d before", during, n, before)
	}
	if m := d.GetMetrics()["held"]; m.Total != n || m.ActiveTasks != 0 {
		t.Fatalf("metrics %+v", m)
	}
}

// osThreads is this process's thread count (Linux).
func osThreads(t *testing.T) int {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "Threads:") {
			var n int
			if _, err := fmt.Sscan(strings.TrimPrefix(line, "Threads:"), &n); err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}
