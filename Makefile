# `make test` installs what is missing, builds, starts the test platform (a real Kubernetes
# control plane, moto, two registries), runs every check and test, and stops everything.
.PHONY: test
test:
	tests/run-all.sh
