# Convenience aliases; the README's quick start calls the scripts directly.
.PHONY: run test lint

run:
	scripts/run.sh

test:
	scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
