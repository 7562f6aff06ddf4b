package switchboard_test

// Invoke from Go vs from Rust, in one process on one runtime. "sequential":
// N sequential invokes of an in-process Rust agent that echoes its input,
// made by a loop inside the library (rust) and by Invoke from Go, completing
// inline (go_inline) or through the callback (go_pending: the agent yields
// once, so every call takes the pending path), and N to a Go handler
// (go_handler), by wall clock and CPU time, per call and as ratios to
// Rust's. "go_parallel": calls from parallel goroutines. docs/benchmarks.md
// has the numbers:
//
//	cd go && go test -run '^$' -bench Invoke -benchtime 2000x

import (
	"context"
	"syscall"
	"testing"
	"time"

	switchboard "example.org/switchboard/go"
)

func BenchmarkInvoke(b *testing.B) {
	db, err := switchboard.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	d := switchboard.NewToolDispatcher(db)
	inline, pending, goAgent := switchboard.Category("bench_inline"), switchboard.Category("bench_pending"), switchboard.Category("bench_go")
	for _, err := range []error{
		d.BenchRegisterRustEcho("rust_inline", inline, false),
		d.BenchRegisterRustEcho("rust_pending", pending, true),
		d.RegisterLocalAgent("go_echo", func(ctx context.Context, tool string, input map[string]any) (map[string]any, error) {
			return input, nil
		}, switchboard.WithTools(goAgent)),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	// Warm-up: caches, the runtime's threads, the first cgo callbacks.
	for _, c := range []switchboard.Category{inline, pending, goAgent} {
		for i := 0; i < 200; i++ {
			if _, err := d.Invoke(context.Background(), "echo", c, map[string]any{"i": i}); err != nil {
				b.Fatal(err)
			}
		}
	}
	goInvokes := func(c switchboard.Category, n int) {
		for i := 0; i < n; i++ {
			if _, err := d.Invoke(context.Background(), "echo", c, map[string]any{"i": i}); err != nil {
				b.Fatal(err)
			}
		}
	}
	rustInvokes := func(n int) {
		if _, err := d.BenchRustInvokes("echo", inline, n); err != nil {
			b.Fatal(err)
		}
	}
	// The paths take turns, in rounds, so that the store growing (and the
	// machine's other load) weighs on all of them alike. Each is timed by
	// the wall clock and by the process's CPU time (all threads: the
	// runtime's and RocksDB's too), which other processes on a loaded
	// machine disturb less.
	b.Run("sequential", func(b *testing.B) {
		const rounds = 10
		per := (b.N + rounds - 1) / rounds
		paths := []struct {
			name string
			run  func()
			wall time.Duration
			cpu  time.Duration
		}{
			{name: "rust", run: func() { rustInvokes(per) }},
			{name: "go_inline", run: func() { goInvokes(inline, per) }},
			{name: "go_pending", run: func() { goInvokes(pending, per) }},
			{name: "go_handler", run: func() { goInvokes(goAgent, per) }},
		}
		for r := 0; r < rounds; r++ {
			for i := range paths {
				wall, cpu := time.Now(), cpuTime(b)
				paths[i].run()
				paths[i].wall += time.Since(wall)
				paths[i].cpu += cpuTime(b) - cpu
			}
		}
		calls := time.Duration(per * rounds)
		rust := paths[0]
		for _, p := range paths {
			b.ReportMetric(float64((p.wall / calls).Microseconds()), p.name+"-µs/call")
			b.ReportMetric(float64((p.cpu / calls).Microseconds()), p.name+"-cpu-µs/call")
			if p.name != "rust" {
				b.ReportMetric(p.wall.Seconds()/rust.wall.Seconds(), p.name+"/rust")
				b.ReportMetric(p.cpu.Seconds()/rust.cpu.Seconds(), p.name+"/rust-cpu")
			}
		}
	})
	b.Run("go_parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				i++
				if _, err := d.Invoke(context.Background(), "echo", inline, map[string]any{"i": i}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// cpuTime is the CPU time the process has used so far, all threads.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
