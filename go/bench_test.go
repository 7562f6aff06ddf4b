package switchboard_test

// Invoke from Go vs from Rust, in one process on one runtime. "sequential":
// N sequential invokes of an in-process Rust agent that echoes its input,
// made by a loop inside the library (rust) and by Invoke from Go, completing
// inline (go_inline) or through the callback (go_pending: the agent yields
// once, so every call takes the pending path), and N to a Go handler
// (go_handler), reported per call and as ratios to Rust's. "go_parallel":
// calls from parallel goroutines. docs/benchmarks.md has the numbers:
//
//	cd go && go test -run '^$' -bench Invoke -benchtime 2000x

import (
	"context"
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
	goInvokes := func(c switchboard.Category, n int) float64 {
		started := time.Now()
		for i := 0; i < n; i++ {
			if _, err := d.Invoke(context.Background(), "echo", c, map[string]any{"i": i}); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(started).Seconds()
	}
	// The paths take turns, in rounds, so that the store growing (and the
	// machine's other load) weighs on all of them alike.
	b.Run("sequential", func(b *testing.B) {
		const rounds = 10
		per := (b.N + rounds - 1) / rounds
		var rust, goInline, goPending, goHandler float64
		for r := 0; r < rounds; r++ {
			secs, err := d.BenchRustInvokes("echo", inline, per)
			if err != nil {
				b.Fatal(err)
			}
			rust += secs
			goInline += goInvokes(inline, per)
			goPending += goInvokes(pending, per)
			goHandler += goInvokes(goAgent, per)
		}
		calls := float64(per * rounds)
		us := func(s float64) float64 { return s / calls * 1e6 }
		b.ReportMetric(us(rust), "rust-µs/call")
		b.ReportMetric(us(goInline), "go_inline-µs/call")
		b.ReportMetric(us(goPending), "go_pending-µs/call")
		b.ReportMetric(us(goHandler), "go_handler-µs/call")
		b.ReportMetric(goInline/rust, "inline/rust")
		b.ReportMetric(goPending/rust, "pending/rust")
		b.ReportMetric(goHandler/rust, "handler/rust")
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
