// Switchboard's Go quick start: the listing of docs/go.md, end to end. It
// starts the two HTTP agents the listing calls (on 127.0.0.1:8001 and
// :8002), then registers them, invokes with least-loaded and sticky
// routing, runs a Go function as a local agent, guards tools/sensitive/*
// with a Go hook, and reads the metrics and the audit trail.
//
// Run after `make go`:  cd go && go run ../examples/quick_start.go
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	switchboard "example.org/switchboard/go"
)

// startAgent serves the agent wire protocol on addr: POST is a call
// ({"tool", "input", ...}) answered with its output, GET is a health probe.
func startAgent(addr, name string) *http.Server {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("the quick start's %s needs %s: %v", name, addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method != http.MethodPost {
			w.Write([]byte(`{"healthy":true}`))
			return
		}
		var call struct {
			Tool  string          `json:"tool"`
			Input json.RawMessage `json:"input"`
		}
		json.NewDecoder(r.Body).Decode(&call)
		json.NewEncoder(w).Encode(map[string]interface{}{"ran": call.Tool, "with": call.Input, "by": name})
	})}
	go srv.Serve(l)
	return srv
}

func main() {
	code := startAgent("127.0.0.1:8001", "code_agent")
	defer code.Close()
	search := startAgent("127.0.0.1:8002", "search_agent")
	defer search.Close()
	dir, err := os.MkdirTemp("", "switchboard-quick-start-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := run(filepath.Join(dir, "agent_data")); err != nil {
		log.Fatal(err)
	}
}

func run(path string) error {
	ctx := context.Background()
	db, err := switchboard.Open(path)
	if err != nil {
		return err
	}
	defer db.Close()
	dispatcher := switchboard.NewToolDispatcher(db) // loads persisted registrations

	err = dispatcher.RegisterAgent("code_agent",
		switchboard.WithTools(switchboard.CategoryCode, switchboard.CategoryShell),
		switchboard.WithEndpoint("http://localhost:8001/invoke"),
		switchboard.WithPriority(10),
	)
	if err != nil {
		return err
	}
	err = dispatcher.RegisterAgent("search_agent",
		switchboard.WithTools(switchboard.CategorySearch, switchboard.CategoryWeb),
		switchboard.WithEndpoint("http://localhost:8002/invoke"),
	)
	if err != nil {
		return err
	}

	result, err := dispatcher.Invoke(ctx, "code_exec", switchboard.CategoryCode,
		map[string]interface{}{"code": "print('hello')"},
		switchboard.WithStrategy(switchboard.StrategyLeastLoaded),
	)
	if err != nil {
		return err
	}
	fmt.Printf("%s -> %s (invocation %s, %d attempt, %.1f ms)\n",
		result.AgentID, result.Output, result.InvocationID, result.Attempts, result.LatencyMs)

	// sticky sessions: both calls go to the agent the session is bound to
	for _, message := range []string{"Write a function", "Now test it"} {
		r, err := dispatcher.Invoke(ctx, "chat", switchboard.CategorySearch,
			map[string]interface{}{"message": message}, switchboard.WithSessionID("session_abc123"))
		if err != nil {
			return err
		}
		fmt.Printf("session_abc123: %s -> %s\n", r.AgentID, r.Output)
	}

	agents, err := switchboard.NewToolDispatcher(db).ListAgents() // persisted
	if err != nil {
		return err
	}
	fmt.Println("registered:", agents)

	if err := dispatcher.EnableHealthChecks(switchboard.HealthChecks{Interval: 30 * time.Second,
		Timeout: 5 * time.Second, UnhealthyThreshold: 3}); err != nil {
		return err
	}

	// in-process agents: a Go function
	err = dispatcher.RegisterLocalAgent("local_code",
		func(ctx context.Context, tool string, input map[string]any) (map[string]any, error) {
			return map[string]any{"output": "ran " + tool}, nil
		}, switchboard.WithTools(switchboard.Category("sensitive")))
	if err != nil {
		return err
	}

	// a policy hook in Go: only trusted agents run sensitive tools
	policy := switchboard.NewPolicyEngine(db)
	err = policy.BeforeWrite("tools/sensitive/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		if c["agent_id"] != "trusted_agent_1" {
			return switchboard.DenyWith(fmt.Sprintf("%v is not trusted", c["agent_id"]))
		}
		return switchboard.Allow
	})
	if err != nil {
		return err
	}
	_, err = dispatcher.Invoke(ctx, "wipe_disk", switchboard.Category("sensitive"), nil)
	var denied *switchboard.Error
	if !errors.Is(err, switchboard.ErrPolicyDenied) || !errors.As(err, &denied) {
		return fmt.Errorf("the sensitive call was not denied: %v", err)
	}
	fmt.Println("denied:", denied.Reason)

	for id, s := range dispatcher.GetMetrics() {
		fmt.Printf("%-12s total %d, success %.0f%%, avg %.1f ms, active %d\n",
			id, s.Total, s.SuccessRate*100, s.AvgLatencyMs, s.ActiveTasks)
	}

	// audit: the dispatch records, oldest first
	it := db.Scan("tools/code/code_exec/")
	for it.Next() {
		var record struct {
			Status  string `json:"status"`
			AgentID string `json:"agent_id"`
		}
		if err := json.Unmarshal(it.Value(), &record); err != nil {
			return err
		}
		fmt.Println(it.Key(), record.Status, record.AgentID)
	}
	return it.Err()
}
