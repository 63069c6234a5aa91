# Kindling. The two commands that matter:
#   make demo   set everything up and run the main job
#   make test   run the tests (what CI runs)

GO       ?= go
BIN      := bin
# Static binaries: the VMM needs no libc (its API is a Unix socket), and
# not mapping one saves ~1.5 MiB of RSS per VMM process.
export CGO_ENABLED := 0
# The Linux boot test builds its kernel (cached) and boots it; on hosts that
# emulate guest kernel mode that takes minutes, hence the long timeout.
TEST_TIMEOUT ?= 45m
FUZZTIME ?= 20s

.PHONY: all setup build kernel test test-short vet fuzz bench bench-kernels bench-invoke bench-restore bench-carry syscall-table proto demo clean

all: build

setup:
	@scripts/setup.sh

build:
	$(GO) build -o $(BIN)/ ./cmd/...
	# kindling-init goes into every image: stripped (its .gopclntab stays,
	# so the kernel builder's analysis still reads it), 6.6 MB not 9.7.
	$(GO) build -trimpath -ldflags="-s -w" -o $(BIN)/kindling-init ./cmd/kindling-init
	$(GO) build -o $(BIN)/kindling-bench ./bench

# The test kernel on its own (the Linux test and the demo build it too).
kernel: build
	$(BIN)/kindling kernel build-test

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

# Fast tests and the slow Linux boot test run together: go test runs the
# packages in parallel, and only the vmm package waits for the kernel.
test: setup build vet
	KINDLING_LINUX_TEST=1 $(GO) test -timeout $(TEST_TIMEOUT) ./...

# Everything but the Linux boot test.
test-short: build
	$(GO) test -short ./...

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzQueuePop -fuzztime=$(FUZZTIME) ./vmm/devices/virtio/
	$(GO) test -run='^$$' -fuzz=FuzzTransport -fuzztime=$(FUZZTIME) ./vmm/devices/virtio/
	$(GO) test -run='^$$' -fuzz=FuzzRequest -fuzztime=$(FUZZTIME) ./vmm/devices/virtio/blk/
	$(GO) test -run='^$$' -fuzz=FuzzPacket -fuzztime=$(FUZZTIME) ./vmm/devices/virtio/vsock/
	$(GO) test -run='^$$' -fuzz=FuzzReadFrame -fuzztime=$(FUZZTIME) ./agent/guest/

# Start-up, memory and restore against QEMU's microvm machine.
bench: setup build
	$(BIN)/kindling-bench

# Per-task kernels for three tasks against Firecracker's and Debian's
# configurations (builds up to three kernels on a cold cache).
bench-kernels: setup build
	$(BIN)/kindling-bench --kernels

# Warm invocations through kindlingd (process backend) against the same
# aws-lambda-go handler called directly over HTTP, the floor: p50/p99/mean
# latency, invocations per second with 8 clients for 3 s, the ratios, the p50
# kindlingd adds (target <= 1 ms). Builds kindlingd and the task from source.
bench-invoke: setup build
	$(BIN)/kindling-bench --invoke

# Restore to first response through kindlingd (echo guest, jailed microVMs):
# on demand, with working-set prefetch and from a standby restore, for 128
# and 512 MiB guests, beside QEMU -incoming of the same sizes, with ratios,
# and restores per second 4 at a time (targets: <= 0.2x QEMU, p50 < 10 ms).
bench-restore: setup build
	$(BIN)/kindling-bench --restore-daemon

# What one version hands the next, through kindlingd (process backend), one
# table per handler: first-invocation latency (cold start; restores from a
# plain and a warm snapshot where a guest's user space runs, else n/a and
# why); the CPU-bound Go handler's CPU per invocation before and after a
# profile-guided rebuild from kindlingd's merged profile (target >= 2% less)
# and with profiling off (overhead, target <= 1%); a Node handler over 400
# modules without and with its carried compile cache (needs node from the
# npm registry or ~/.cache/kindling/node). About 1.5 minutes on 2 cores
# with a warm Go build cache; --carry-* flags set the counts.
bench-carry: setup build
	$(BIN)/kindling-bench --carry

# Re-derive kernelbuilder/syscalls/table_gen.go from the installed kernel
# source (the drift test in make test says when this is needed).
syscall-table: setup
	$(GO) run ./kernelbuilder/syscalls/gen

# Re-generate agent/api's Go code from agent/api/kindling.proto with Debian
# bookworm's protoc (3.21.12, from make setup) and the protoc-gen-go and
# protoc-gen-go-grpc that go.mod pins as tools (TestGeneratedCodeIsCurrent in
# make test runs the same command and says when this is needed).
proto: setup
	gen_go=$$($(GO) tool -n protoc-gen-go) && \
	gen_grpc=$$($(GO) tool -n protoc-gen-go-grpc) && \
	cd agent/api && protoc \
		--plugin=protoc-gen-go="$$gen_go" --go_out=. --go_opt=paths=source_relative \
		--plugin=protoc-gen-go-grpc="$$gen_grpc" --go-grpc_out=. --go-grpc_opt=paths=source_relative \
		kindling.proto

demo: setup build
	$(GO) build -o $(BIN)/kindling-demo ./internal/demo
	$(BIN)/kindling-demo

clean:
	rm -rf $(BIN)
