package switchboard

/*
#include "switchboard.h"

extern void switchboardInvokeDone(size_t, int32_t, SbInvocation*, SbBytes);
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// ToolDispatcher routes tool invocations to agents; registrations persist
// in the database. It is safe for concurrent use.
type ToolDispatcher struct {
	db  *Database
	mu  sync.RWMutex
	ptr *C.SbDispatcher
	err error
}

// NewToolDispatcher is a dispatcher over db: it loads persisted
// registrations and marks dispatches a dead process left in flight as
// interrupted. If that fails (or db is closed), every method returns the
// error, as does Err.
func NewToolDispatcher(db *Database) *ToolDispatcher {
	d := &ToolDispatcher{db: db}
	db.mu.RLock()
	if db.ptr == nil {
		d.err = errClosed()
	} else {
		var errb C.SbBytes
		d.err = check(C.sb_dispatcher_new(db.ptr, &d.ptr, &errb), errb)
	}
	db.mu.RUnlock()
	if d.err == nil && !db.adopt(d) {
		d.close()
		d.err = errClosed()
	}
	return d
}

// Err is why the dispatcher cannot be used, if it cannot.
func (d *ToolDispatcher) Err() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.usable()
}

func (d *ToolDispatcher) usable() error {
	if d.err != nil {
		return d.err
	}
	if d.ptr == nil {
		return invalid("this dispatcher has been closed")
	}
	return nil
}

// Close frees the dispatcher: its health checks stop and its local agents'
// handlers are released once no call of theirs is in flight. Registrations
// stay in the database. Closing the database closes it too.
func (d *ToolDispatcher) Close() error {
	d.db.forget(d)
	d.close()
	return nil
}

func (d *ToolDispatcher) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ptr != nil {
		C.sb_dispatcher_free(d.ptr)
		d.ptr = nil
	}
}

// AgentOption configures a registration.
type AgentOption func(*agentOptions)

type agentOptions struct {
	Tools          []Category `json:"tools"`
	Endpoint       string     `json:"endpoint,omitempty"`
	Priority       int        `json:"priority,omitempty"`
	HealthURL      string     `json:"health_url,omitempty"`
	TimeoutSeconds float64    `json:"timeout_seconds,omitempty"`
	MaxConcurrency uint32     `json:"max_concurrency,omitempty"`
}

// WithTools sets the categories the agent serves.
func WithTools(categories ...Category) AgentOption {
	return func(o *agentOptions) { o.Tools = append(o.Tools, categories...) }
}

// WithEndpoint sets an HTTP agent's URL (the wire protocol is in
// docs/routing.md).
func WithEndpoint(url string) AgentOption {
	return func(o *agentOptions) { o.Endpoint = url }
}

// WithPriority ranks the agent under StrategyPriority (higher first; 0 by
// default).
func WithPriority(priority int) AgentOption {
	return func(o *agentOptions) { o.Priority = priority }
}

// WithHealthURL sets where health checks probe (default: the endpoint's
// /health).
func WithHealthURL(url string) AgentOption {
	return func(o *agentOptions) { o.HealthURL = url }
}

// WithTimeout bounds each call to the agent.
func WithTimeout(timeout time.Duration) AgentOption {
	return func(o *agentOptions) { o.TimeoutSeconds = timeout.Seconds() }
}

// WithMaxConcurrency bounds the agent's calls in flight.
func WithMaxConcurrency(n uint32) AgentOption {
	return func(o *agentOptions) { o.MaxConcurrency = n }
}

func agentJSON(opts []AgentOption) ([]byte, error) {
	o := agentOptions{Tools: []Category{}}
	for _, f := range opts {
		f(&o)
	}
	if o.TimeoutSeconds < 0 {
		return nil, invalid("a timeout must be positive")
	}
	return json.Marshal(o)
}

// RegisterAgent registers an HTTP agent (an existing id is replaced).
func (d *ToolDispatcher) RegisterAgent(agentID string, opts ...AgentOption) error {
	options, err := agentJSON(opts)
	if err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return err
	}
	id, idn := cstr(agentID)
	o, on := cbytes(options)
	var errb C.SbBytes
	return check(C.sb_dispatcher_register_agent(d.ptr, id, idn, o, on, &errb), errb)
}

// UnregisterAgent removes an agent (ErrUnknownAgent if there is none).
func (d *ToolDispatcher) UnregisterAgent(agentID string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return err
	}
	id, idn := cstr(agentID)
	var errb C.SbBytes
	return check(C.sb_dispatcher_unregister_agent(d.ptr, id, idn, &errb), errb)
}

// ListAgents returns every registered agent id, sorted.
func (d *ToolDispatcher) ListAgents() ([]string, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return nil, err
	}
	var out, errb C.SbBytes
	if err := check(C.sb_dispatcher_list_agents(d.ptr, &out, &errb), errb); err != nil {
		return nil, err
	}
	var ids []string
	if err := json.Unmarshal(takeBytes(out), &ids); err != nil {
		return nil, &Error{Code: "Internal", Message: "switchboard: unreadable agent list: " + err.Error()}
	}
	return ids, nil
}

// AgentMetrics are one agent's counters.
type AgentMetrics struct {
	Total                uint64  `json:"total"`
	Successes            uint64  `json:"successes"`
	Failures             uint64  `json:"failures"`
	SuccessRate          float64 `json:"success_rate"`
	AvgLatencyMs         float64 `json:"avg_latency_ms"`
	P50LatencyMs         float64 `json:"p50_latency_ms"`
	P99LatencyMs         float64 `json:"p99_latency_ms"`
	ActiveTasks          uint64  `json:"active_tasks"`
	Healthy              bool    `json:"healthy"`
	Cancelled            uint64  `json:"cancelled"`
	OutcomeWriteFailures uint64  `json:"outcome_write_failures"`
	PanicCalls           uint64  `json:"panic_calls"`
}

// GetMetrics returns each agent's metrics by id; nil if the dispatcher
// cannot be used (Err says why).
func (d *ToolDispatcher) GetMetrics() map[string]AgentMetrics {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.usable() != nil {
		return nil
	}
	var out, errb C.SbBytes
	if check(C.sb_dispatcher_metrics(d.ptr, &out, &errb), errb) != nil {
		return nil
	}
	var m map[string]AgentMetrics
	if json.Unmarshal(takeBytes(out), &m) != nil {
		return nil
	}
	return m
}

// HealthChecks configures EnableHealthChecks; a zero field takes the
// default (Interval 30s, Timeout 5s, UnhealthyThreshold 3,
// HealthyThreshold 2, PanicThreshold 0.5).
type HealthChecks struct {
	Interval           time.Duration
	Timeout            time.Duration
	UnhealthyThreshold uint32
	HealthyThreshold   uint32
	// The share of unhealthy agents above which the router ignores health
	// and spreads calls over all of them (0 to 1).
	PanicThreshold float64
}

// EnableHealthChecks starts (or reconfigures) health checks in the
// background: HTTP agents are probed every interval, and consecutive
// failures mark agents unhealthy.
func (d *ToolDispatcher) EnableHealthChecks(h HealthChecks) error {
	or := func(v, def time.Duration) float64 {
		if v == 0 {
			return def.Seconds()
		}
		return v.Seconds()
	}
	unhealthy, healthy, panicShare := h.UnhealthyThreshold, h.HealthyThreshold, h.PanicThreshold
	if unhealthy == 0 {
		unhealthy = 3
	}
	if healthy == 0 {
		healthy = 2
	}
	if panicShare == 0 {
		panicShare = 0.5
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return err
	}
	var errb C.SbBytes
	status := C.sb_dispatcher_enable_health_checks(d.ptr, C.double(or(h.Interval, 30*time.Second)),
		C.double(or(h.Timeout, 5*time.Second)), C.uint32_t(unhealthy), C.uint32_t(healthy),
		C.double(panicShare), &errb)
	return check(status, errb)
}

// DisableHealthChecks stops health checks; agents keep their health.
func (d *ToolDispatcher) DisableHealthChecks() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return err
	}
	C.sb_dispatcher_disable_health_checks(d.ptr)
	return nil
}

// InvokeOption configures one call.
type InvokeOption func(*invokeOptions)

type invokeOptions struct {
	strategy    Strategy
	sessionID   string
	maxAttempts uint32
}

// WithStrategy chooses how the agent is picked (default round robin).
func WithStrategy(s Strategy) InvokeOption {
	return func(o *invokeOptions) { o.strategy = s }
}

// WithSessionID makes the call sticky: calls of one session go to the
// agent the session is bound to while it is healthy.
func WithSessionID(id string) InvokeOption {
	return func(o *invokeOptions) { o.sessionID = id }
}

// WithMaxAttempts bounds the agents tried (failover included).
func WithMaxAttempts(n uint32) InvokeOption {
	return func(o *invokeOptions) { o.maxAttempts = n }
}

// InvocationResult is what a successful Invoke returns.
type InvocationResult struct {
	// Its record lives under tools/{category}/{tool}/{InvocationID}.
	InvocationID string
	AgentID      string
	// The agent's output, JSON (decode it with json.Unmarshal).
	Output json.RawMessage
	// Agent calls made (1 unless it failed over).
	Attempts  uint32
	LatencyMs float64
}

func resultOf(r *C.SbInvocation) *InvocationResult {
	return &InvocationResult{
		InvocationID: string(goBytes(r.invocation_id.ptr, r.invocation_id.len)),
		AgentID:      string(goBytes(r.agent_id.ptr, r.agent_id.len)),
		Output:       json.RawMessage(goBytes(r.output.ptr, r.output.len)),
		Attempts:     uint32(r.attempts),
		LatencyMs:    float64(r.latency_ms),
	}
}

// pending is an invoke the library completes through switchboardInvokeDone.
type pending struct {
	done   chan struct{}
	result *InvocationResult
	err    error
}

// Invoke routes one call of tool to an agent serving category, with input
// (anything encoding/json marshals; nil is {}), and returns its output.
// Cancelling ctx stops the call where it stands: Invoke returns an error
// matching ErrCancelled (and ctx.Err()), and the dispatch is recorded
// "cancelled". A context already done calls and records nothing.
//
// A call that completes without waiting (an in-process Rust agent) returns
// on the calling goroutine; otherwise the goroutine parks, holding no OS
// thread, until the library's runtime completes it.
func (d *ToolDispatcher) Invoke(ctx context.Context, tool string, category Category, input interface{}, opts ...InvokeOption) (*InvocationResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, cancelled(err)
	}
	var o invokeOptions
	for _, f := range opts {
		f(&o)
	}
	var in []byte
	if input != nil {
		var err error
		if in, err = json.Marshal(input); err != nil {
			return nil, invalid("the input does not encode as JSON: %v", err)
		}
	}
	p := &pending{done: make(chan struct{})}
	h := newHandle(p)
	defer deleteHandle(h)

	call, result, err := d.start(tool, category, in, o, h)
	if call == nil {
		return result, err
	}
	defer C.sb_call_free(call)
	select {
	case <-p.done:
	case <-ctx.Done():
		C.sb_call_cancel(call)
		<-p.done
		var e *Error
		if errors.As(p.err, &e) && e.Code == "Cancelled" {
			p.err = cancelled(ctx.Err())
		}
	}
	return p.result, p.err
}

// start makes the C call; a non-nil call means the invoke is pending.
func (d *ToolDispatcher) start(tool string, category Category, in []byte, o invokeOptions, h C.size_t) (*C.SbCall, *InvocationResult, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return nil, nil, err
	}
	t, tn := cstr(tool)
	c, cn := cstr(string(category))
	i, in_ := cbytes(in)
	s, sn := cstr(string(o.strategy))
	ss, ssn := cstr(o.sessionID)
	var result C.SbInvocation
	var call *C.SbCall
	var errb C.SbBytes
	status := C.sb_dispatcher_invoke(d.ptr, t, tn, c, cn, i, in_, s, sn, ss, ssn,
		C.uint32_t(o.maxAttempts), C.SbInvokeDone(C.switchboardInvokeDone), h, &result, &call, &errb)
	switch status {
	case C.SB_OK:
		r := resultOf(&result)
		C.sb_invocation_free(&result)
		return nil, r, nil
	case C.SB_PENDING:
		return call, nil, nil
	default:
		return nil, nil, check(status, errb)
	}
}

//export switchboardInvokeDone
func switchboardInvokeDone(userData C.size_t, status C.int32_t, result *C.SbInvocation, errb C.SbBytes) {
	p := handleValue(userData).(*pending)
	if status == C.SB_OK {
		p.result = resultOf(result)
	} else {
		// The payload is lent for this callback: copy, do not free.
		p.err = errorOf(status, goBytes(errb.ptr, errb.len))
	}
	close(p.done)
}
