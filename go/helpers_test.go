package switchboard_test

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	switchboard "example.org/switchboard/go"
)

// openDB opens a fresh database in a temporary directory, closed (then
// removed) when the test ends.
func openDB(t *testing.T) *switchboard.Database {
	t.Helper()
	db, err := switchboard.Open(t.TempDir())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// call is one call an HTTP agent received (the dispatcher's wire format).
type call struct {
	InvocationID string                 `json:"invocation_id"`
	Tool         string                 `json:"tool"`
	Category     string                 `json:"category"`
	Input        map[string]interface{} `json:"input"`
	SessionID    *string                `json:"session_id"`
}

// agent is an HTTP agent on 127.0.0.1: POST answers respond(call) as JSON
// with status 200; GET (health) answers 200.
type agent struct {
	*httptest.Server
	mu    sync.Mutex
	calls []call
}

func (a *agent) URL() string { return a.Server.URL + "/invoke" }

func (a *agent) received() []call {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]call(nil), a.calls...)
}

// startAgent starts an HTTP agent on addr ("127.0.0.1:0" for any port),
// closed when the test ends.
func startAgent(t *testing.T, addr string, respond func(call) interface{}) *agent {
	t.Helper()
	a := &agent{}
	a.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method != http.MethodPost {
			w.Write([]byte(`{"ok":true}`))
			return
		}
		var c call
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		a.calls = append(a.calls, c)
		a.mu.Unlock()
		json.NewEncoder(w).Encode(respond(c))
	}))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	a.Server.Listener = l
	a.Start()
	t.Cleanup(a.Close)
	return a
}

// decode unmarshals an invocation's output.
func decode(t *testing.T, raw json.RawMessage) map[string]interface{} {
	t.Helper()
	var out map[string]interface{}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("output %s: %v", raw, err)
	}
	return out
}

// record reads the dispatch record under key.
func record(t *testing.T, db *switchboard.Database, key string) map[string]interface{} {
	t.Helper()
	raw, found, err := db.Get(key)
	if err != nil || !found {
		t.Fatalf("get %s: found %v, %v", key, found, err)
	}
	var r map[string]interface{}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("record %s: %v", key, err)
	}
	return r
}
