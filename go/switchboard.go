// Package switchboard runs Switchboard's Rust core in-process: the same
// RocksDB store, policy hooks, router and dispatcher as the Rust crate,
// through its C ABI (the switchboard-capi static library, linked with cgo).
// It is not a re-implementation and not an HTTP client of `switchboard
// serve`.
//
// Build the library first (`make go` from the repository), which also
// points go/lib at it; docs/go.md says more.
//
//	db, err := switchboard.Open("./agent_data")
//	defer db.Close()
//	dispatcher := switchboard.NewToolDispatcher(db)
//	err = dispatcher.RegisterLocalAgent("local_code", handler,
//	    switchboard.WithTools(switchboard.CategoryCode))
//	result, err := dispatcher.Invoke(ctx, "code_exec", switchboard.CategoryCode,
//	    map[string]any{"code": "print('hello')"})
package switchboard

/*
#cgo CFLAGS: -I${SRCDIR}/../capi
#cgo LDFLAGS: -L${SRCDIR}/lib -lswitchboard_capi -lstdc++ -lgcc_s -lutil -lrt -lpthread -lm -ldl
#include "switchboard.h"
*/
import "C"

import (
	"runtime/cgo"
	"sync/atomic"
	"unsafe"
)

// Version is the version of the Rust library linked in.
func Version() string {
	return C.GoString(C.sb_version())
}

// cbytes lends b to one C call: the library copies what it keeps, so the
// Go memory is only read while the call runs (cgo's pointer rules).
func cbytes(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

func cstr(s string) (*C.uint8_t, C.size_t) {
	return cbytes([]byte(s))
}

// goBytes copies bytes the library lent for the current call or callback.
func goBytes(p *C.uint8_t, n C.size_t) []byte {
	if p == nil || n == 0 {
		return nil
	}
	out := make([]byte, int(n))
	copy(out, unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n)))
	return out
}

// takeBytes copies bytes the library handed over, and frees them.
func takeBytes(b C.SbBytes) []byte {
	if b.ptr == nil {
		return nil
	}
	out := goBytes(b.ptr, b.len)
	C.sb_bytes_free(b)
	return out
}

// liveHandles counts the cgo handles this package holds (invokes in
// flight, local agents and hooks the library has not released), so tests
// can tell that Close leaks none.
var liveHandles int64

func newHandle(v interface{}) C.size_t {
	atomic.AddInt64(&liveHandles, 1)
	return C.size_t(cgo.NewHandle(v))
}

func handleValue(h C.size_t) interface{} {
	return cgo.Handle(h).Value()
}

func deleteHandle(h C.size_t) {
	cgo.Handle(h).Delete()
	atomic.AddInt64(&liveHandles, -1)
}
