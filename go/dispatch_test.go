package switchboard_test

import (
	"context"
	"errors"
	"testing"

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
