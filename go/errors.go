package switchboard

/*
#include "switchboard.h"
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"time"
)

// Error is every error Switchboard returns: Code names the kind (the Rust
// core's Error variant, the same codes the Node and Python packages use)
// and the fields of that kind are set. Test the kind with errors.Is and
// the sentinels below, e.g. errors.Is(err, switchboard.ErrNoAgentAvailable).
type Error struct {
	// Code is "InvalidInput", "PolicyDenied", "RateLimited", "PolicyLoad",
	// "NoAgentAvailable", "ToolFailed", "AgentFailed", "Timeout",
	// "UnknownAgent", "Conflict", "Storage", "Unavailable", "Internal" or
	// "Cancelled".
	Code    string
	Message string

	Key          string        // PolicyDenied, Conflict
	Reason       string        // PolicyDenied, PolicyLoad, NoAgentAvailable
	Limit        string        // RateLimited
	RetryAfter   time.Duration // RateLimited
	PolicyName   string        // PolicyLoad
	Category     string        // NoAgentAvailable
	AgentID      string        // ToolFailed, AgentFailed, Timeout, UnknownAgent
	ToolMessage  string        // ToolFailed
	AgentMessage string        // AgentFailed
	Timeout      time.Duration // Timeout

	sentinel bool
	cause    error
}

func (e *Error) Error() string {
	if e.sentinel {
		return "switchboard: " + e.Code
	}
	return e.Message
}

// Is reports whether target is the sentinel of e's kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.sentinel && t.Code == e.Code
}

// Unwrap returns the context's error of a cancelled call.
func (e *Error) Unwrap() error {
	return e.cause
}

func sentinel(code string) *Error {
	return &Error{Code: code, sentinel: true}
}

// The kinds of Error, one per variant of the Rust core's Error, plus
// ErrCancelled.
var (
	// Malformed input (id, key, value, URL or option), or a closed
	// database; nothing was read or written.
	ErrInvalidInput = sentinel("InvalidInput")
	// A policy hook or Rego module refused (Key, Reason).
	ErrPolicyDenied = sentinel("PolicyDenied")
	// A rate limit is used up (Limit, RetryAfter).
	ErrRateLimited = sentinel("RateLimited")
	// A Rego module could not be loaded (PolicyName, Reason).
	ErrPolicyLoad = sentinel("PolicyLoad")
	// No healthy agent serves the category, or every one was tried
	// (Category, Reason).
	ErrNoAgentAvailable = sentinel("NoAgentAvailable")
	// The tool reported its own failure; not retried (AgentID, ToolMessage).
	ErrToolFailed = sentinel("ToolFailed")
	// The agent could not answer: 5xx, bad response, connection failure,
	// a local handler's error or panic (AgentID, AgentMessage).
	ErrAgentFailed = sentinel("AgentFailed")
	// The agent did not answer in time (AgentID, Timeout).
	ErrTimeout = sentinel("Timeout")
	// No agent with this id is registered (AgentID).
	ErrUnknownAgent = sentinel("UnknownAgent")
	// A transaction lost a race on a key (Key); retry it.
	ErrConflict = sentinel("Conflict")
	// RocksDB failed, or a stored value does not decode.
	ErrStorage = sentinel("Storage")
	// A shared store (cluster mode) cannot be reached.
	ErrUnavailable = sentinel("Unavailable")
	// Something outside the caller's control failed.
	ErrInternal = sentinel("Internal")
	// The call's context was cancelled (or its deadline passed): the call
	// stopped where it stood and is recorded "cancelled". errors.Is also
	// matches the context's error.
	ErrCancelled = sentinel("Cancelled")
)

var codes = map[C.int32_t]string{
	C.SB_INVALID_INPUT:      "InvalidInput",
	C.SB_POLICY_DENIED:      "PolicyDenied",
	C.SB_RATE_LIMITED:       "RateLimited",
	C.SB_POLICY_LOAD:        "PolicyLoad",
	C.SB_NO_AGENT_AVAILABLE: "NoAgentAvailable",
	C.SB_TOOL_FAILED:        "ToolFailed",
	C.SB_AGENT_FAILED:       "AgentFailed",
	C.SB_TIMEOUT:            "Timeout",
	C.SB_UNKNOWN_AGENT:      "UnknownAgent",
	C.SB_CONFLICT:           "Conflict",
	C.SB_STORAGE:            "Storage",
	C.SB_UNAVAILABLE:        "Unavailable",
	C.SB_INTERNAL:           "Internal",
	C.SB_CANCELLED:          "Cancelled",
}

// payload is what the library writes to *err.
type payload struct {
	Message string `json:"message"`
	Fields  struct {
		Key               string  `json:"key"`
		Reason            string  `json:"reason"`
		Limit             string  `json:"limit"`
		RetryAfterSeconds float64 `json:"retry_after_seconds"`
		PolicyName        string  `json:"policy_name"`
		Category          string  `json:"category"`
		AgentID           string  `json:"agent_id"`
		ToolMessage       string  `json:"tool_message"`
		AgentMessage      string  `json:"agent_message"`
		TimeoutSeconds    float64 `json:"timeout_seconds"`
	} `json:"fields"`
}

// errorOf turns a status and its payload (already copied) into an *Error.
func errorOf(status C.int32_t, raw []byte) error {
	code, ok := codes[status]
	if !ok {
		code = "Internal"
	}
	var p payload
	if err := json.Unmarshal(raw, &p); err != nil {
		p.Message = fmt.Sprintf("switchboard: status %d with an unreadable payload %q", int(status), raw)
	}
	f := p.Fields
	return &Error{
		Code:         code,
		Message:      p.Message,
		Key:          f.Key,
		Reason:       f.Reason,
		Limit:        f.Limit,
		RetryAfter:   seconds(f.RetryAfterSeconds),
		PolicyName:   f.PolicyName,
		Category:     f.Category,
		AgentID:      f.AgentID,
		ToolMessage:  f.ToolMessage,
		AgentMessage: f.AgentMessage,
		Timeout:      seconds(f.TimeoutSeconds),
	}
}

// check turns a status and the *err it may have filled into an error.
func check(status C.int32_t, errb C.SbBytes) error {
	if status == C.SB_OK {
		return nil
	}
	return errorOf(status, takeBytes(errb))
}

func invalid(format string, args ...interface{}) error {
	msg := "invalid input: " + fmt.Sprintf(format, args...)
	return &Error{Code: "InvalidInput", Message: msg}
}

func cancelled(cause error) error {
	return &Error{
		Code:    "Cancelled",
		Message: "the call was cancelled by its context: " + cause.Error(),
		cause:   cause,
	}
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}

// ToolError, returned by a local agent's handler, is the tool's own
// failure: the call ends with ErrToolFailed and no other agent is tried.
// Any other error (or a panic) is the agent's failure, and the call fails
// over to the next agent, as for an HTTP 5xx.
type ToolError struct {
	Message string
}

func (e *ToolError) Error() string { return e.Message }

// NewToolError is a ToolError with this message.
func NewToolError(message string) *ToolError {
	return &ToolError{Message: message}
}
