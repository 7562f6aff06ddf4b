package switchboard

import "sync/atomic"

// LiveHandles is how many cgo handles the package holds now.
func LiveHandles() int64 {
	return atomic.LoadInt64(&liveHandles)
}

// BenchRegisterRustEcho registers an in-process Rust agent echoing its
// input; with yieldFirst every call to it takes the pending path.
func (d *ToolDispatcher) BenchRegisterRustEcho(agentID string, category Category, yieldFirst bool) error {
	return d.benchRegisterRustEcho(agentID, category, yieldFirst)
}

// BenchRustInvokes makes n invokes from Rust, one after another, and
// returns the seconds they took.
func (d *ToolDispatcher) BenchRustInvokes(tool string, category Category, n int) (float64, error) {
	return d.benchRustInvokes(tool, category, n)
}
