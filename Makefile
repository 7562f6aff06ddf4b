# The two set-up commands of README.md. Both install what the build needs first.
.PHONY: demo test deps

demo: deps
	cargo run --quiet -- demo

test: deps
	cargo test -- --test-threads=2

deps:
	@bash scripts/install-deps
