# Custodian — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
ENV := source scripts/env.sh &&
# cargo test, with each failing test's reason repeated at the end of the output
TEST := CARGO=$(CARGO) bash scripts/cargo-test.sh

.PHONY: help install build run test test-unit test-sqlite test-postgres lint smoke chaos chaos-short bench fuzz clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: ## install what is missing (nats-server, the OP's npm packages, PostgreSQL); idempotent
	@bash scripts/install.sh

build: install ## build the custodian binary (debug)
	$(CARGO) build --locked -p custodian

run: build ## start NATS, the OpenID provider and every service on SQLite (.data/); Ctrl-C stops
	@bash scripts/run.sh

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

test-unit: install ## unit tests and end-to-end tests on SQLite
	$(ENV) CUSTODIAN_TEST_BACKEND=sqlite $(TEST) --locked --workspace

test-postgres: install ## end-to-end tests on PostgreSQL (a throwaway cluster on a free port)
	$(ENV) CUSTODIAN_TEST_BACKEND=postgres $(TEST) --locked -p custodian-tests --test e2e
	$(ENV) CUSTODIAN_TEST_BACKEND=postgres $(TEST) --locked -p custodian dossier::tests::the_live_state

smoke: build ## `make run` comes up and shows a published grant
	@bash scripts/smoke-run.sh

# Every service its own process, PostgreSQL with fsync on, one process SIGKILLed per round
# (each kind at least twice in the default 20 rounds: 160 people).
CHAOS_PG := CUSTODIAN_TEST_PG_OPTIONS="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
CHAOS_ROUNDS ?= 20
CHAOS_PEOPLE ?= 8
chaos-short: build ## the chaos suite, each kind of process killed once, on one NATS server and on a 3-node cluster (part of `make test`)
	$(ENV) $(CHAOS_PG) CHAOS_ROUNDS=9 CHAOS_PEOPLE=4 CHAOS_NATS_NODES=1 $(TEST) --locked -p custodian-tests --test chaos -- --nocapture
	$(ENV) $(CHAOS_PG) CHAOS_ROUNDS=10 CHAOS_PEOPLE=4 CHAOS_NATS_NODES=3 $(TEST) --locked -p custodian-tests --test chaos -- --nocapture

chaos: build ## the chaos suite, CHAOS_ROUNDS rounds of CHAOS_PEOPLE revocations, single-node then 3-node; prints the latencies per process killed (CHAOS_SEED replays a schedule)
	$(ENV) $(CHAOS_PG) CHAOS_ROUNDS=$(CHAOS_ROUNDS) CHAOS_PEOPLE=$(CHAOS_PEOPLE) CHAOS_NATS_NODES=1 $(TEST) --locked -p custodian-tests --test chaos -- --nocapture
	$(ENV) $(CHAOS_PG) CHAOS_ROUNDS=$(CHAOS_ROUNDS) CHAOS_PEOPLE=$(CHAOS_PEOPLE) CHAOS_NATS_NODES=3 $(TEST) --locked -p custodian-tests --test chaos -- --nocapture

test: install lint test-unit test-postgres smoke chaos-short ## everything CI runs: lint, all tests on both backends, the make-run smoke test, the short chaos suite

bench: install ## benchmarks with raw baselines measured in the same run (see BENCHMARKS.md)
	$(ENV) $(CARGO) build --locked --release -p custodian-tests --bin custodian-bench
	$(ENV) target/release/custodian-bench
	$(ENV) target/release/custodian-bench sweep 100000
	$(ENV) target/release/custodian-bench revocation
	$(ENV) target/release/custodian-bench bus 50000
	@echo "-- the same consent and revocation benches with every span exported over OTLP, then 1% sampled"
	$(ENV) CUSTODIAN_BENCH_TRACES=1 OTEL_TRACES_SAMPLER=always_on target/release/custodian-bench
	$(ENV) CUSTODIAN_BENCH_TRACES=1 OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 target/release/custodian-bench
	$(ENV) CUSTODIAN_BENCH_TRACES=1 OTEL_TRACES_SAMPLER=always_on target/release/custodian-bench revocation
	$(ENV) CUSTODIAN_BENCH_TRACES=1 OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 target/release/custodian-bench revocation

FUZZ_SECONDS ?= 60
fuzz: ## fuzz the CloudEvent, logout-token and SET decoders for FUZZ_SECONDS each (nightly; not in CI)
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) +nightly install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz run decode_cloudevent -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && $(CARGO) +nightly fuzz run signal_tokens -- -max_total_time=$(FUZZ_SECONDS)

clean: ## remove build output and local data
	$(CARGO) clean
	rm -rf .data
