# The set-up commands of README.md. Both install what the build needs first.
#
# The demo runs the binary built with the test targets (`--all-targets`): built
# alone, the binary resolves dependency features differently and would compile
# RocksDB a second time.
.PHONY: demo cluster-demo test deps python node go install bench-gateway bench-mcp bench-cluster

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# Where `make install` puts bin/switchboard.
PREFIX ?= $(HOME)/.local

# The one build of the demo, `make install` and the tests, announced: the
# first one compiles RocksDB and is long.
define build
@echo "Building switchboard (cargo build --all-targets). The first build compiles RocksDB:"
@echo "about 15 minutes on 2 cores. After that, a change rebuilds in a minute or two."
cargo build --all-targets
endef

demo: deps
	$(build)
	$(TARGET_DIR)/debug/switchboard demo

# `switchboard` on the PATH: the debug binary of the build the tests and the
# demo use, so RocksDB is not compiled a second time (`cargo install --path .`
# gives an optimised binary at the cost of a second, optimised RocksDB build).
install: deps
	$(build)
	install -d "$(PREFIX)/bin"
	install -m 755 "$(TARGET_DIR)/debug/switchboard" "$(PREFIX)/bin/switchboard"
	@echo "Installed $(PREFIX)/bin/switchboard (a debug build)."
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; \
	  *) echo "$(PREFIX)/bin is not on your PATH: add  export PATH=\"$(PREFIX)/bin:\$$PATH\"  to your shell's profile." ;; esac

# Three nodes and etcd on 127.0.0.1 in a temporary directory (docs/cluster.md).
cluster-demo: deps
	$(build)
	bash scripts/cluster-demo

test: deps
	cargo test
	bash scripts/mcp-test
	bash scripts/otel-test
	bash scripts/a2a-test
	bash scripts/api-fuzz
	bash scripts/ui-test
	bash scripts/python-test
	bash scripts/node-test
	bash scripts/go-test

# Builds the Python package into .venv (reusing the dev build of `cargo test`,
# see docs/python.md) without running its tests.
python: deps
	cargo build --all-targets --quiet
	SKIP_PYTEST=1 bash scripts/python-test

# Builds the Node package (node/switchboard.node, node/node_modules) on the
# dev build of `cargo test` (see docs/typescript.md) without running its tests.
node: deps
	cargo build --all-targets --quiet
	SKIP_NODE_TESTS=1 bash scripts/node-test

# Builds the Go package's library (capi/, sharing the dev build of `cargo
# test`, see docs/go.md) and links go/lib to it, without running its tests.
# The library alone resolves the test build's features, so it needs no
# `cargo build --all-targets` first.
go: deps
	SKIP_GO_TESTS=1 bash scripts/go-test

deps:
	@bash scripts/install-deps

# The gateway load harness (benches/gateway.rs): direct vs HAProxy vs
# `switchboard serve`; needs wrk and haproxy, installed here if missing.
bench-gateway: deps
	@bash scripts/install-bench-deps
	cargo bench --bench gateway

# MCP `tools/call` through `switchboard serve`'s /mcp vs directly on the same
# MCP server (benches/mcp.rs): MCP_CONCURRENCY, MCP_ROUNDS, MCP_CALLS.
bench-mcp:
	cargo bench --bench mcp

# Sticky calls in cluster mode (etcd, 3 nodes) vs one node (benches/cluster.rs);
# needs etcd, which deps installs.
bench-cluster: deps
	cargo bench --bench cluster
