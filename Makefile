# The two set-up commands of README.md. Both install what the build needs first.
#
# The demo runs the binary built with the test targets (`--all-targets`): built
# alone, the binary resolves dependency features differently and would compile
# RocksDB a second time.
.PHONY: demo test deps bench-gateway

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

demo: deps
	cargo build --all-targets --quiet
	$(TARGET_DIR)/debug/switchboard demo

test: deps
	cargo test
	bash scripts/mcp-test

deps:
	@bash scripts/install-deps

# The gateway load harness (benches/gateway.rs): direct vs HAProxy vs
# `switchboard serve`; needs wrk and haproxy, installed here if missing.
bench-gateway: deps
	@bash scripts/install-bench-deps
	cargo bench --bench gateway
