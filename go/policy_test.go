package switchboard_test

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	switchboard "example.org/switchboard/go"
)

func TestSensitivePolicyLetsOnlyTrustedAgentsRun(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	policy := switchboard.NewPolicyEngine(db)
	var mu sync.Mutex
	var seen [][2]string
	must(t, policy.BeforeWrite("tools/sensitive/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		mu.Lock()
		seen = append(seen, [2]string{key, c["agent_id"].(string)})
		mu.Unlock()
		if c["agent_id"] != "trusted_agent_1" && c["agent_id"] != "trusted_agent_2" {
			return switchboard.DenyWith("untrusted agent")
		}
		return switchboard.Allow
	}))
	sensitive := switchboard.Category("sensitive")
	must(t, d.RegisterLocalAgent("rogue_agent", echo("rogue_agent"), switchboard.WithTools(sensitive), switchboard.WithPriority(10)))
	// Only the rogue agent: every candidate is denied, nothing runs.
	_, err := d.Invoke(context.Background(), "wipe", sensitive, nil)
	var e *switchboard.Error
	if !errors.Is(err, switchboard.ErrPolicyDenied) || !errors.As(err, &e) || !strings.Contains(e.Reason, "rogue_agent: untrusted agent") || !strings.HasPrefix(e.Key, "tools/sensitive/wipe/") {
		t.Fatalf("got %#v", err)
	}
	must(t, d.RegisterLocalAgent("trusted_agent_1", echo("trusted_agent_1"), switchboard.WithTools(sensitive), switchboard.WithPriority(1)))
	for i := 0; i < 4; i++ {
		r, err := d.Invoke(context.Background(), "wipe", sensitive, map[string]any{"i": i})
		must(t, err)
		if r.AgentID != "trusted_agent_1" {
			t.Fatalf("call %d went to %s", i, r.AgentID)
		}
	}
	// The hook judged the dispatch records: tools/sensitive/{tool}/{id}.
	record := regexp.MustCompile(`^tools/sensitive/wipe/[0-9A-Z]+$`)
	judgedRogue := false
	mu.Lock()
	for _, s := range seen {
		judgedRogue = judgedRogue || (record.MatchString(s[0]) && s[1] == "rogue_agent")
	}
	mu.Unlock()
	if !judgedRogue {
		t.Fatalf("the hook saw %v", seen)
	}
	if m := d.GetMetrics()["rogue_agent"]; m.Total != 0 {
		t.Fatalf("the rogue agent was called: %+v", m)
	}
	// Other categories are out of the hook's scope.
	must(t, d.RegisterLocalAgent("rogue_code", echo("rogue_code"), switchboard.WithTools(switchboard.CategoryCode)))
	if r, err := d.Invoke(context.Background(), "run", switchboard.CategoryCode, nil); err != nil || r.AgentID != "rogue_code" {
		t.Fatalf("got %+v, %v", r, err)
	}
}

func TestAHookThatPanicsDenies(t *testing.T) {
	db := openDB(t)
	policy := switchboard.NewPolicyEngine(db)
	must(t, policy.BeforeWrite("notes/panicky/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		panic("hook bug")
	}))
	err := db.Put("notes/panicky/x", []byte(`"v"`))
	var e *switchboard.Error
	if !errors.Is(err, switchboard.ErrPolicyDenied) || !errors.As(err, &e) || e.Key != "notes/panicky/x" || !strings.Contains(e.Reason, "panicked: hook bug") {
		t.Fatalf("got %#v", err)
	}
	if _, found, err := db.Get("notes/panicky/x"); found || err != nil {
		t.Fatalf("a denied write was stored (%v)", err)
	}
	// A hook returning no PolicyAction denies too.
	must(t, policy.BeforeWrite("notes/blank/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		return switchboard.PolicyAction{}
	}))
	if err := db.Put("notes/blank/x", []byte(`"v"`)); !errors.Is(err, switchboard.ErrPolicyDenied) {
		t.Fatalf("got %v", err)
	}

	// During a dispatch (on the library's threads) a panicking hook denies
	// that candidate, and the next is tried.
	d := switchboard.NewToolDispatcher(db)
	must(t, policy.BeforeWrite("tools/guarded/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		if c["agent_id"] == "g_bad" {
			panic("cannot judge")
		}
		return switchboard.Allow
	}))
	must(t, d.RegisterLocalAgent("g_bad", echo("g_bad"), switchboard.WithTools("guarded"), switchboard.WithPriority(9)))
	must(t, d.RegisterLocalAgent("g_good", echo("g_good"), switchboard.WithTools("guarded"), switchboard.WithPriority(1)))
	r, err := d.Invoke(context.Background(), "t", "guarded", nil, switchboard.WithStrategy(switchboard.StrategyPriority))
	if err != nil || r.AgentID != "g_good" {
		t.Fatalf("got %+v, %v", r, err)
	}
	if m := d.GetMetrics()["g_bad"]; m.Total != 0 {
		t.Fatalf("g_bad was called: %+v", m)
	}
}

func TestHooksRewriteAndRedact(t *testing.T) {
	db := openDB(t)
	policy := switchboard.NewPolicyEngine(db)
	must(t, policy.BeforeWrite("profiles/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		if c["user"] != "admin" {
			return switchboard.DenyWith("only admin writes profiles")
		}
		return switchboard.Modify([]byte(strings.Replace(string(value), "}", `,"checked":true}`, 1)))
	}))
	must(t, policy.AfterRead("profiles/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		if c["user"] == "admin" {
			return switchboard.Allow
		}
		return switchboard.Modify([]byte(`{"redacted":true}`))
	}))
	var logged []string
	must(t, policy.BeforeDelete("profiles/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		logged = append(logged, key)
		return switchboard.Log("deleted " + key)
	}))
	admin := switchboard.WithPolicyContext(map[string]string{"user": "admin"})
	if err := db.Put("profiles/ada", []byte(`{"name":"ada"}`)); !errors.Is(err, switchboard.ErrPolicyDenied) {
		t.Fatalf("got %v", err)
	}
	must(t, db.Put("profiles/ada", []byte(`{"name":"ada"}`), admin))
	if v, _, err := db.Get("profiles/ada", admin); err != nil || string(v) != `{"name":"ada","checked":true}` {
		t.Fatalf("admin read %s, %v", v, err)
	}
	if v, _, err := db.Get("profiles/ada"); err != nil || string(v) != `{"redacted":true}` {
		t.Fatalf("a reader got %s, %v", v, err)
	}
	must(t, db.Delete("profiles/ada", admin))
	if _, found, _ := db.Get("profiles/ada", admin); found || len(logged) != 1 {
		t.Fatalf("found %v after delete, logged %v", found, logged)
	}
	if err := policy.BeforeWrite("bad[glob", func(string, []byte, map[string]any) switchboard.PolicyAction { return switchboard.Allow }); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("a bad scope: %v", err)
	}
}

func TestHookPoints(t *testing.T) {
	db := openDB(t)
	policy := switchboard.NewPolicyEngine(db)
	var mu sync.Mutex
	var events []string
	note := func(point string) switchboard.Hook {
		return func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
			mu.Lock()
			events = append(events, point+" "+key+" "+string(value))
			mu.Unlock()
			return switchboard.Allow
		}
	}
	must(t, policy.AfterWrite("log/*", note("after-write")))
	must(t, policy.AfterDelete("log/*", note("after-delete")))
	must(t, policy.BeforeRead("secret/*", func(key string, value []byte, c map[string]any) switchboard.PolicyAction {
		if c["role"] != "auditor" {
			return switchboard.DenyWith("auditors only")
		}
		return switchboard.Allow
	}))
	must(t, db.Put("log/a", []byte(`"x"`)))
	must(t, db.Delete("log/a"))
	if strings.Join(events, "; ") != `after-write log/a "x"; after-delete log/a ` {
		t.Fatalf("events %q", events)
	}
	must(t, db.Put("secret/k", []byte(`"s"`)))
	if _, _, err := db.Get("secret/k"); !errors.Is(err, switchboard.ErrPolicyDenied) {
		t.Fatalf("an unauthorised read: %v", err)
	}
	auditor := switchboard.WithPolicyContext(map[string]string{"role": "auditor"})
	if v, _, err := db.Get("secret/k", auditor); err != nil || string(v) != `"s"` {
		t.Fatalf("the auditor read %s, %v", v, err)
	}
	if it := db.Scan("secret/"); it.Next() || it.Err() != nil {
		t.Fatalf("a scan showed a denied key (%v)", it.Err())
	}
	it := db.Scan("secret/", auditor)
	if !it.Next() || it.Key() != "secret/k" {
		t.Fatalf("the auditor's scan: %v", it.Err())
	}
	// A closed handle adds nothing more; its hooks stay on the database.
	must(t, policy.Close())
	if err := policy.AfterWrite("log/*", note("late")); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("a closed policy engine: %v", err)
	}
	if _, _, err := db.Get("secret/k"); !errors.Is(err, switchboard.ErrPolicyDenied) {
		t.Fatalf("the hook went with the handle: %v", err)
	}
}

func TestShippedRegoPolicies(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	names, err := switchboard.NewPolicyEngine(db).LoadDir("../policies")
	if err != nil || len(names) == 0 {
		t.Fatalf("loaded %v, %v", names, err)
	}
	sensitive := switchboard.Category("sensitive")
	must(t, d.RegisterLocalAgent("intruder", echo("intruder"), switchboard.WithTools(sensitive)))
	if _, err := d.Invoke(context.Background(), "wipe", sensitive, nil); !errors.Is(err, switchboard.ErrPolicyDenied) {
		t.Fatalf("got %v", err)
	}
	must(t, d.RegisterLocalAgent("trusted_agent_2", echo("trusted_agent_2"), switchboard.WithTools(sensitive)))
	if r, err := d.Invoke(context.Background(), "wipe", sensitive, nil, switchboard.WithStrategy(switchboard.StrategyRoundRobin)); err != nil || r.AgentID != "trusted_agent_2" {
		t.Fatalf("got %+v, %v", r, err)
	}
}

func TestRateLimits(t *testing.T) {
	db := openDB(t)
	d := switchboard.NewToolDispatcher(db)
	policy := switchboard.NewPolicyEngine(db)
	must(t, d.RegisterLocalAgent("a", echo("a"), switchboard.WithTools(switchboard.CategoryCode)))
	must(t, policy.AddRateLimit(switchboard.LimitDispatch, 2, time.Hour, switchboard.PerAgent))
	for i := 0; i < 2; i++ {
		if _, err := d.Invoke(context.Background(), "t", switchboard.CategoryCode, nil); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	_, err := d.Invoke(context.Background(), "t", switchboard.CategoryCode, nil)
	var e *switchboard.Error
	if !errors.Is(err, switchboard.ErrRateLimited) || !errors.As(err, &e) || e.RetryAfter <= 0 || e.RetryAfter > time.Hour || !strings.Contains(e.Limit, "2") {
		t.Fatalf("the third call: %#v", err)
	}
	must(t, policy.AddRateLimit(switchboard.LimitPut, 1, time.Hour, switchboard.PerGlobal))
	must(t, db.Put("notes/1", []byte(`1`)))
	if err := db.Put("notes/2", []byte(`2`)); !errors.Is(err, switchboard.ErrRateLimited) {
		t.Fatalf("the second put: %v", err)
	}
	if err := policy.AddRateLimit(switchboard.LimitGet, 1, 0, switchboard.PerGlobal); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("a zero window: %v", err)
	}
	if err := policy.AddRateLimit(switchboard.RateLimitOp(42), 1, time.Second, switchboard.PerGlobal); !errors.Is(err, switchboard.ErrInvalidInput) {
		t.Fatalf("an unknown operation: %v", err)
	}
}
