package switchboard

/*
#include "switchboard.h"

extern int32_t switchboardHook(size_t, uint8_t*, size_t, uint8_t*, size_t, uint8_t*, size_t, SbHookReply*);
extern void switchboardRelease(size_t);
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// PolicyAction is what a hook decides: Allow, Deny, DenyWith(reason),
// Modify(value) or Log(note). The zero PolicyAction denies.
type PolicyAction struct {
	verdict C.int32_t
	payload []byte
	valid   bool
}

var (
	// Allow lets the operation through.
	Allow = PolicyAction{verdict: C.SB_ALLOW, valid: true}
	// Deny refuses it ("denied by policy").
	Deny = PolicyAction{verdict: C.SB_DENY, valid: true}
)

// DenyWith refuses the operation with reason.
func DenyWith(reason string) PolicyAction {
	return PolicyAction{verdict: C.SB_DENY, payload: []byte(reason), valid: true}
}

// Modify stores value instead (before a write), or hands it to the reader
// instead of the stored one (after a read).
func Modify(value []byte) PolicyAction {
	return PolicyAction{verdict: C.SB_MODIFY, payload: append([]byte{}, value...), valid: true}
}

// Log allows, and keeps note in the decision log.
func Log(note string) PolicyAction {
	return PolicyAction{verdict: C.SB_LOG, payload: []byte(note), valid: true}
}

// Hook judges one operation on key. value is the value being written (or
// read, after a read; empty before a read and for deletes). context holds
// string values: the dispatcher's has agent_id, tool, category,
// session_id, invocation_id, strategy and action.
//
// Hooks decide synchronously: the commit waits for the verdict, on
// whichever thread commits. A hook that panics denies (fail closed).
type Hook func(key string, value []byte, context map[string]interface{}) PolicyAction

// PolicyEngine is a handle on a database's one hook chain.
type PolicyEngine struct {
	db  *Database
	mu  sync.RWMutex
	ptr *C.SbPolicy
	err error
}

// NewPolicyEngine is a handle on db's hook chain. If db is closed, every
// method returns that error. Hooks stay on the database until it closes.
func NewPolicyEngine(db *Database) *PolicyEngine {
	p := &PolicyEngine{db: db}
	db.mu.RLock()
	if db.ptr == nil {
		p.err = errClosed()
	} else {
		var errb C.SbBytes
		p.err = check(C.sb_policy_new(db.ptr, &p.ptr, &errb), errb)
	}
	db.mu.RUnlock()
	if p.err == nil && !db.adopt(p) {
		p.close()
		p.err = errClosed()
	}
	return p
}

// Close frees the handle; its hooks stay on the database. Closing the
// database closes it too.
func (p *PolicyEngine) Close() error {
	p.db.forget(p)
	p.close()
	return nil
}

func (p *PolicyEngine) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ptr != nil {
		C.sb_policy_free(p.ptr)
		p.ptr = nil
	}
}

func (p *PolicyEngine) usable() error {
	if p.err != nil {
		return p.err
	}
	if p.ptr == nil {
		return invalid("this policy engine's database has been closed")
	}
	return nil
}

// hook is what a registered Hook's cgo handle holds.
type hook struct {
	fn   Hook
	name string
}

func (p *PolicyEngine) add(point C.int32_t, pointName, scope string, fn Hook) error {
	if fn == nil {
		return invalid("the hook is nil")
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.usable(); err != nil {
		return err
	}
	name := fmt.Sprintf("%s(%s)", pointName, scope)
	s, sn := cstr(scope)
	nm, nmn := cstr(name)
	var errb C.SbBytes
	// From here the library owns the handle: it releases it when the
	// database closes, or at once on a failure.
	status := C.sb_policy_add_hook(p.ptr, point, s, sn, nm, nmn, C.SbHookFn(C.switchboardHook),
		newHandle(&hook{fn: fn, name: name}), C.SbReleaseFn(C.switchboardRelease), &errb)
	return check(status, errb)
}

// BeforeWrite runs fn before every put whose key matches the glob scope
// (* within a segment, ** across them); it may allow, deny or rewrite.
func (p *PolicyEngine) BeforeWrite(scope string, fn Hook) error {
	return p.add(C.SB_BEFORE_WRITE, "BeforeWrite", scope, fn)
}

// AfterWrite runs fn after every committed put under scope.
func (p *PolicyEngine) AfterWrite(scope string, fn Hook) error {
	return p.add(C.SB_AFTER_WRITE, "AfterWrite", scope, fn)
}

// BeforeDelete runs fn before every delete under scope (value is empty).
func (p *PolicyEngine) BeforeDelete(scope string, fn Hook) error {
	return p.add(C.SB_BEFORE_DELETE, "BeforeDelete", scope, fn)
}

// AfterDelete runs fn after every committed delete under scope.
func (p *PolicyEngine) AfterDelete(scope string, fn Hook) error {
	return p.add(C.SB_AFTER_DELETE, "AfterDelete", scope, fn)
}

// BeforeRead runs fn before every read (and every key of a scan) under
// scope; a Deny refuses the read (a scan skips the key).
func (p *PolicyEngine) BeforeRead(scope string, fn Hook) error {
	return p.add(C.SB_BEFORE_READ, "BeforeRead", scope, fn)
}

// AfterRead runs fn on every value read under scope before the reader
// gets it: Modify hands the reader another value, Deny hides it.
func (p *PolicyEngine) AfterRead(scope string, fn Hook) error {
	return p.add(C.SB_AFTER_READ, "AfterRead", scope, fn)
}

// AddRego compiles a Rego module judging puts and deletes under scope
// (ErrPolicyLoad if it does not compile).
func (p *PolicyEngine) AddRego(scope, source string) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.usable(); err != nil {
		return err
	}
	s, sn := cstr(scope)
	src, srcn := cstr(source)
	var errb C.SbBytes
	return check(C.sb_policy_add_rego(p.ptr, s, sn, src, srcn, &errb), errb)
}

// LoadDir loads every *.rego file of dir (scopes from their "# scope:"
// comments) and returns the modules' names.
func (p *PolicyEngine) LoadDir(dir string) ([]string, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.usable(); err != nil {
		return nil, err
	}
	d, dn := cstr(dir)
	var out, errb C.SbBytes
	if err := check(C.sb_policy_load_dir(p.ptr, d, dn, &out, &errb), errb); err != nil {
		return nil, err
	}
	var names []string
	if err := json.Unmarshal(takeBytes(out), &names); err != nil {
		return nil, &Error{Code: "Internal", Message: "switchboard: unreadable module names: " + err.Error()}
	}
	return names, nil
}

//export switchboardHook
func switchboardHook(userData C.size_t, key *C.uint8_t, keyLen C.size_t, value *C.uint8_t, valueLen C.size_t, ctxJSON *C.uint8_t, ctxLen C.size_t, reply *C.SbHookReply) C.int32_t {
	h := handleValue(userData).(*hook)
	action := h.judge(string(goBytes(key, keyLen)), goBytes(value, valueLen), goBytes(ctxJSON, ctxLen))
	if action.payload != nil {
		b, n := cbytes(action.payload)
		C.sb_hook_reply_set(reply, b, n)
	}
	return action.verdict
}

// judge runs the hook; a panic or a zero PolicyAction denies.
func (h *hook) judge(key string, value, ctxJSON []byte) (action PolicyAction) {
	defer func() {
		if r := recover(); r != nil {
			action = DenyWith(fmt.Sprintf("policy hook %s panicked: %v; denying (fail closed)", h.name, r))
		}
	}()
	ctx := map[string]interface{}{}
	if len(ctxJSON) > 0 {
		if err := json.Unmarshal(ctxJSON, &ctx); err != nil {
			return DenyWith(fmt.Sprintf("policy hook %s got an unreadable context (%v); denying (fail closed)", h.name, err))
		}
	}
	if value == nil {
		value = []byte{}
	}
	action = h.fn(key, value, ctx)
	if !action.valid {
		return DenyWith(fmt.Sprintf("policy hook %s returned no PolicyAction; denying (fail closed)", h.name))
	}
	return action
}

// RateLimitOp is an operation a rate limit counts.
type RateLimitOp int32

// The operations a rate limit can count.
const (
	LimitPut      RateLimitOp = C.SB_LIMIT_PUT
	LimitDelete   RateLimitOp = C.SB_LIMIT_DELETE
	LimitGet      RateLimitOp = C.SB_LIMIT_GET
	LimitDispatch RateLimitOp = C.SB_LIMIT_DISPATCH
)

// RateLimitScope is what a rate limit counts per.
type RateLimitScope int32

// The scopes a rate limit counts per.
const (
	PerGlobal  RateLimitScope = C.SB_PER_GLOBAL
	PerAgent   RateLimitScope = C.SB_PER_AGENT
	PerSession RateLimitScope = C.SB_PER_SESSION
	PerTool    RateLimitScope = C.SB_PER_TOOL
)

// AddRateLimit allows at most max operations op per window, counted per
// scope; past it they fail with ErrRateLimited (Limit, RetryAfter).
func (p *PolicyEngine) AddRateLimit(op RateLimitOp, max uint32, window time.Duration, per RateLimitScope) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.usable(); err != nil {
		return err
	}
	var errb C.SbBytes
	status := C.sb_policy_add_rate_limit(p.ptr, C.int32_t(op), C.uint32_t(max), C.double(window.Seconds()), C.int32_t(per), &errb)
	return check(status, errb)
}
