package switchboard

/*
#include "switchboard.h"

extern void switchboardHandlerCall(size_t, SbHandlerCall*, uint8_t*, size_t, uint8_t*, size_t);
extern void switchboardHandlerCancel(size_t, SbHandlerCall*);
extern void switchboardRelease(size_t);
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// Handler is an in-process agent: it runs tool with input and returns the
// output. ctx is cancelled when the dispatch stops waiting (the caller's
// context, or the agent's timeout); what it returns then is ignored.
// Returning a *ToolError is the tool's failure (final); any other error, or
// a panic, is the agent's failure and the call fails over.
type Handler func(ctx context.Context, tool string, input map[string]interface{}) (map[string]interface{}, error)

// localAgent is what a registered Handler's cgo handle holds.
type localAgent struct {
	fn      Handler
	mu      sync.Mutex
	running map[*C.SbHandlerCall]context.CancelFunc
}

// RegisterLocalAgent registers handler as an in-process agent (an existing
// id is replaced). Each call runs on a goroutine of its own.
func (d *ToolDispatcher) RegisterLocalAgent(agentID string, handler Handler, opts ...AgentOption) error {
	if handler == nil {
		return invalid("the handler is nil")
	}
	options, err := agentJSON(opts)
	if err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return err
	}
	agent := &localAgent{fn: handler, running: map[*C.SbHandlerCall]context.CancelFunc{}}
	id, idn := cstr(agentID)
	o, on := cbytes(options)
	var errb C.SbBytes
	// From here the library owns the handle: it releases it (through
	// switchboardRelease) when the agent goes, or at once on a failure.
	status := C.sb_dispatcher_register_local_agent(d.ptr, id, idn, o, on,
		C.SbHandlerFn(C.switchboardHandlerCall), C.SbHandlerCancelFn(C.switchboardHandlerCancel),
		newHandle(agent), C.SbReleaseFn(C.switchboardRelease), &errb)
	return check(status, errb)
}

//export switchboardHandlerCall
func switchboardHandlerCall(userData C.size_t, call *C.SbHandlerCall, tool *C.uint8_t, toolLen C.size_t, input *C.uint8_t, inputLen C.size_t) {
	a := handleValue(userData).(*localAgent)
	name := string(goBytes(tool, toolLen))
	in := goBytes(input, inputLen)
	ctx, cancel := context.WithCancel(context.Background())
	a.mu.Lock()
	a.running[call] = cancel
	a.mu.Unlock()
	go a.run(ctx, call, name, in)
}

//export switchboardHandlerCancel
func switchboardHandlerCancel(userData C.size_t, call *C.SbHandlerCall) {
	a := handleValue(userData).(*localAgent)
	a.mu.Lock()
	cancel := a.running[call]
	a.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

//export switchboardRelease
func switchboardRelease(userData C.size_t) {
	deleteHandle(userData)
}

// run calls the handler and finishes call with its outcome.
func (a *localAgent) run(ctx context.Context, call *C.SbHandlerCall, tool string, input []byte) {
	outcome, data := a.outcome(ctx, tool, input)
	a.mu.Lock()
	cancel := a.running[call]
	delete(a.running, call)
	a.mu.Unlock()
	cancel()
	p, n := cbytes(data)
	C.sb_handler_call_finish(call, outcome, p, n)
}

func (a *localAgent) outcome(ctx context.Context, tool string, input []byte) (outcome C.int32_t, data []byte) {
	defer func() {
		if r := recover(); r != nil {
			outcome, data = C.SB_HANDLER_AGENT_ERROR, []byte(fmt.Sprintf("handler panicked: %v", r))
		}
	}()
	var in map[string]interface{}
	if err := json.Unmarshal(input, &in); err != nil {
		return C.SB_HANDLER_TOOL_ERROR, []byte("the input is not a JSON object: " + err.Error())
	}
	out, err := a.fn(ctx, tool, in)
	if err != nil {
		var te *ToolError
		if errors.As(err, &te) {
			return C.SB_HANDLER_TOOL_ERROR, []byte(err.Error())
		}
		return C.SB_HANDLER_AGENT_ERROR, []byte(err.Error())
	}
	b, err := json.Marshal(out)
	if err != nil {
		return C.SB_HANDLER_TOOL_ERROR, []byte("the handler returned something that is not JSON: " + err.Error())
	}
	return C.SB_HANDLER_OK, b
}
