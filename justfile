# moira's one entry point. On a fresh clone use ./just (it installs the pinned
# `just` into .tools/ first); with just on PATH, plain `just` works the same.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where cargo puts the binaries (CARGO_TARGET_DIR when it is set).
target := env_var_or_default("CARGO_TARGET_DIR", "target")

# List the recipes
default:
    @just --list

# Install the pinned nats-server (and just) into .tools/ if missing
tools:
    scripts/tools.sh all

# Build every binary (debug)
build: tools
    cargo build --workspace --bins

# Run all unit and end-to-end tests against real nats-servers
test: build
    scripts/tools.sh test
    scripts/test.sh

# Formatting and clippy, warnings are errors
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Start the dev stack, open a gate, approve it from a second command
demo: build
    scripts/demo.sh

# Run the one-machine stack in the foreground (Ctrl-C stops it)
dev *ARGS: build
    {{target}}/debug/moira dev {{ARGS}}

# Release binaries, systemd units, configs and install.sh in dist/moira-<version>-<os>-<arch>.tar.gz
dist:
    scripts/dist.sh

# Benchmarks against the broker's floor, release build: `bench` (full) or `bench quick`
bench MODE="full": tools
    cargo build --release -p moira-bench -p moira-gatekeeper -p moira-runner -p moira-cli -p moira-web
    {{target}}/release/moira-bench {{MODE}}
