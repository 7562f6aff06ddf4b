package switchboard

// The measuring side of the package, reached from its tests and benchmarks
// (export_test.go): an in-process Rust agent, and invokes made from Rust,
// to compare invokes from Go against.

/*
#include "switchboard.h"
*/
import "C"

// benchRegisterRustEcho registers an in-process Rust agent echoing its
// input; with yieldFirst every call to it takes the pending path.
func (d *ToolDispatcher) benchRegisterRustEcho(agentID string, category Category, yieldFirst bool) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return err
	}
	id, idn := cstr(agentID)
	c, cn := cstr(string(category))
	var errb C.SbBytes
	return check(C.sb_bench_register_rust_echo(d.ptr, id, idn, c, cn, C.bool(yieldFirst), &errb), errb)
}

// benchRustInvokes makes n invokes from Rust, one after another, and
// returns the seconds they took.
func (d *ToolDispatcher) benchRustInvokes(tool string, category Category, n int) (float64, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.usable(); err != nil {
		return 0, err
	}
	t, tn := cstr(tool)
	c, cn := cstr(string(category))
	var secs C.double
	var errb C.SbBytes
	err := check(C.sb_bench_rust_invokes(d.ptr, t, tn, c, cn, C.uint32_t(n), &secs, &errb), errb)
	return float64(secs), err
}
