# `make test` installs what is missing, builds, starts the test platform (a real Kubernetes
# control plane, moto, two registries), runs every check and test, and stops everything.
.PHONY: test
test:
	tests/run-all.sh

# `make demo` starts a local control plane, a registry and a credential broker, runs pullkeeper
# with config/examples/demo/ and walks through what it does; Ctrl-C stops everything.
.PHONY: demo
demo:
	demo/run.sh

# `make bench` builds the release binary and bench/pkbench, starts its own control plane and prints
# the fan-out figures for 1,000 namespaces at concurrency 8 and 32, beside a raw client-go writer
# (bench/README.md; PK_BENCH_NAMESPACES="1000 3000 10000" draws the curve; PK_BENCH_* override).
.PHONY: bench
bench:
	bench/run.sh

# `make bench-recovery` starts a control plane with the node, makes 20 Pods stuck in
# ImagePullBackOff before pullkeeper runs, and prints the recovery figures (bench/README.md).
.PHONY: bench-recovery
bench-recovery:
	bench/recovery.sh

# `make fuzz` (not part of `make test`) runs each fuzz target of fuzz/ with cargo-fuzz on the
# nightly toolchain for PK_FUZZ_SECONDS (default 600) and prints CPU seconds, runs and crashes
# per target (fuzz/README.md; figures in tests/RELIABILITY.md).
.PHONY: fuzz
fuzz:
	fuzz/run.sh
