# Swiftlet: build, test and run.
#   make run              install what is missing, build Swiftlet, the guest kernel and the
#                         initramfs, and boot Linux into a shell on this terminal
#   make run-tiny         boot the 64-bit tiny guest (seconds, not minutes)
#   make test             install what is missing, build the tiny guests, run every test suite
#   make fmt              format the Swift sources (swift format, .swift-format)
#   make lint             check formatting and that every public/package symbol is documented
#   make guests           build the tiny test guests (Guests/build/)
#   make guest-kernel     build vmlinux and bzImage from Debian's linux-source (cached)
#   make guest-initramfs  build the busybox initramfs with Swiftlet's init (cached)
#   make check-linux      boot the guest kernel with the initramfs to the init banner and run a
#                         command to its end: times boot, one system call and one fork+exec
#   make test-kernel      Linux's own drivers against Swiftlet's devices, driven by programs in the
#                         guest: ext4 root and disks on virtio-blk, virtio-rng, 2 and 4 vCPUs,
#                         virtio-net in a network namespace, ping; QEMU microvm timed beside it
#   make test-run         swiftlet run against a busybox OCI bundle the check builds: output, env,
#                         cwd, hostname, read-only root, uid/gid, exit status, default args
#   make fuzz             fuzz the virtqueue walker and virtio-mmio transport (FUZZ_SECONDS=60;
#                         FUZZ_TARGET=api: the API socket's request handling; FUZZ_TARGET=vsock:
#                         the virtio-vsock packet path)
#   make build            debug build;  make release: the optimised build users install
#   make install          make release, then install swiftlet and its helper executables into
#                         $(DESTDIR)$(PREFIX)/bin (PREFIX=/usr/local)

# The toolchain's usual place on the development machines, if it is not on PATH already.
ifneq ($(wildcard /opt/swift/usr/bin/swift),)
export PATH := /opt/swift/usr/bin:$(PATH)
endif
SWIFT ?= swift
SWIFTLET_DEBUG := .build/debug/swiftlet
SWIFTLET_RELEASE := .build/release/swiftlet
# Debian packages the build, the guests and the tests need (e2fsprogs: swiftlet run's root images).
APT_PACKAGES := gcc binutils make libc6-dev libfdt-dev device-tree-compiler e2fsprogs

.PHONY: install all deps build release guests test fmt lint run run-tiny guest-kernel guest-initramfs check-linux test-kernel test-run clean bench fuzz

# Guest kernel and initramfs are cached outside the work tree (see Guests/linux/build-kernel.sh).
export SWIFTLET_CACHE ?= /var/cache/swiftlet
# The int3 self-test patch (Guests/linux/0001-skip-int3-selftest.patch) is applied when asked
# (EMULATION_PATCH=1). It defaults to 1 where /dev/kvm is PVM (kvm_pvm), whose emulator lacks
# int3 in guest kernel mode; elsewhere to 0.
EMULATED_KVM := $(if $(wildcard /sys/module/kvm_pvm),1,0)
EMULATION_PATCH ?= $(EMULATED_KVM)
# Kernel options for a KVM that emulates guest kernel code (Docs/LINUX.md explains each).
LINUX_EMULATED_ARGS := noxsave tsc=reliable no_timer_check nowatchdog mitigations=off 8250.nr_uarts=1
LINUX_ARGS := console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
	$(if $(filter 1,$(EMULATED_KVM)),$(LINUX_EMULATED_ARGS))
LINUX_CPUID_MASK := $(if $(filter 1,$(EMULATED_KVM)),--cpuid-mask emulated)
KERNEL_DIR = $(SWIFTLET_CACHE)/kernel-current
INITRAMFS = $(SWIFTLET_CACHE)/initramfs.cpio
CHECK_LINUX_TIMEOUT ?= 300
# vCPUs of the Linux guest for make run and make check-linux (make run CPUS=2).
CPUS ?= 1

all: build guests

# $(call apt-install,PACKAGES): installs those of PACKAGES that are missing (apt-get update only
# when something is missing).
apt-install = missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deps:
	@$(call apt-install,$(APT_PACKAGES))
	@command -v $(SWIFT) >/dev/null || { echo "swift not found: install Swift 6 (https://swift.org/install) and put it on PATH" >&2; exit 1; }

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --static-swift-stdlib

# swiftlet execs its helpers (swiftlet-run, ...) from its own directory: they are installed together.
PREFIX ?= /usr/local
INSTALLED_EXECUTABLES := swiftlet swiftlet-run swiftlet-api
install: release
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(addprefix .build/release/,$(INSTALLED_EXECUTABLES)) $(DESTDIR)$(PREFIX)/bin/

guests: deps
	$(MAKE) -C Guests tiny

test: deps guests lint
	$(SWIFT) test

# Every public symbol of the library has a documentation comment.
# Formatting: the toolchain's swift-format with the checked-in .swift-format (4 spaces, 130
# columns, the existing line breaks kept, imports ordered). `make fmt` rewrites in place;
# `make lint` (run by `make test`) fails on any file fmt would change, and on a public or
# package declaration without a doc comment.
FORMAT_PATHS := Sources Tests Examples Package.swift
fmt:
	$(SWIFT) format --in-place --recursive --parallel $(FORMAT_PATHS)

lint:
	$(SWIFT) format lint --strict --recursive --parallel $(FORMAT_PATHS)
	python3 Tools/check-doc-comments.py

run-tiny: build guests
	$(SWIFTLET_DEBUG) boot --kernel Guests/build/longmode-hello.elf

# boot.conf beside the kernel: what `swiftlet run` adds to the command line and CPUID mask on
# this host (Docs/RUN.md); the VMM itself never detects an emulating KVM.
guest-kernel:
	SWIFTLET_KERNEL_EMULATION_PATCH=$(EMULATION_PATCH) Guests/linux/build-kernel.sh
	@{ echo "# Written by make guest-kernel: what swiftlet run adds on this host (Docs/RUN.md)."; \
	  echo "cmdline: $(if $(filter 1,$(EMULATED_KVM)),$(LINUX_EMULATED_ARGS))"; \
	  echo "cpuid-mask: $(if $(filter 1,$(EMULATED_KVM)),emulated)"; } > $(KERNEL_DIR)/boot.conf.tmp \
	  && mv $(KERNEL_DIR)/boot.conf.tmp $(KERNEL_DIR)/boot.conf

guest-initramfs:
	Guests/initramfs/build-initramfs.sh

run: build guest-kernel guest-initramfs
	$(SWIFTLET_DEBUG) boot --kernel $(KERNEL_DIR)/bzImage --initrd $(INITRAMFS) --memory 256M --cpus $(CPUS) \
	  --cmdline "$(LINUX_ARGS)" $(LINUX_CPUID_MASK)

# Debian packages the end-to-end kernel check needs.
TEST_KERNEL_PACKAGES := iproute2 iputils-ping e2fsprogs qemu-system-x86 busybox-static musl-tools
# vCPUs of test-kernel's main boot (its second boot always uses 4).
TEST_KERNEL_CPUS ?= 2

test-kernel: build guest-kernel guest-initramfs
	@$(call apt-install,$(TEST_KERNEL_PACKAGES))
	python3 Guests/test-kernel.py $(SWIFTLET_DEBUG) $(KERNEL_DIR)/vmlinux $(INITRAMFS) --cpus=$(TEST_KERNEL_CPUS) \
	  $(if $(filter 1,$(EMULATED_KVM)),--emulated)

# `swiftlet run` end to end (Guests/test-run.py): two Linux boots of a busybox bundle.
test-run: build guest-kernel guest-initramfs
	@$(call apt-install,e2fsprogs busybox-static)
	python3 Guests/test-run.py $(dir $(SWIFTLET_DEBUG))

check-linux: build guest-kernel guest-initramfs
	Guests/check-linux.sh $(SWIFTLET_DEBUG) $(KERNEL_DIR)/vmlinux $(INITRAMFS) $(CHECK_LINUX_TIMEOUT) \
	  "$(LINUX_ARGS)" $(LINUX_CPUID_MASK) --cpus $(CPUS)

# Benchmarks (Benchmarks/run.py, Docs/BENCHMARKS.md): installs QEMU, runc and busybox-static when
# missing, builds both release variants, the bench guests and the C floor, runs everything side
# by side and rewrites Docs/BENCHMARKS.md and Docs/benchmarks.svg. `make bench LINUX=1` also
# boots the guest kernel and initramfs to the init banner (minutes on an emulating KVM) and runs
# `make test-kernel` first, whose Swiftlet/QEMU times to init and ping round trips it reports,
# and then Benchmarks/workloads.py with the release build (`make release`): the same OCI bundle
# under `runc run` and `swiftlet run`, snapshot restore against cold boot, and N idle instances
# of each (WORKLOAD_ROUNDS interleaved rounds, WORKLOAD_DENSITY instances; tens of minutes here).
WORKLOAD_ROUNDS ?= 3
WORKLOAD_DENSITY ?= 100
bench: deps $(if $(LINUX),guest-kernel guest-initramfs test-kernel)
	@$(call apt-install,qemu-system-x86 runc busybox-static util-linux e2fsprogs)
	SWIFT=$(SWIFT) python3 Benchmarks/run.py $(if $(LINUX),--linux --kernel $(KERNEL_DIR)/vmlinux \
	  --initrd $(INITRAMFS) --linux-cmdline "$(LINUX_ARGS)" --linux-flags="$(LINUX_CPUID_MASK)")
	$(if $(LINUX),$(SWIFT) build -c release --static-swift-stdlib && python3 Benchmarks/workloads.py \
	  --swiftlet .build/release/swiftlet --kernel $(KERNEL_DIR)/vmlinux --initrd $(INITRAMFS) \
	  --rounds $(WORKLOAD_ROUNDS) --density $(WORKLOAD_DENSITY))

# Fuzzing (Sources/SwiftletFuzz, Docs/VIRTIO.md): the virtqueue walker and the virtio-mmio
# transport with a virtio-blk device, built with libFuzzer and AddressSanitizer in its own scratch
# directory, run for FUZZ_SECONDS over a corpus kept in .build-fuzz/corpus. Prints how many inputs
# ran and whether one crashed (the input is saved as .build-fuzz/crash-*; the target fails).
# FUZZ_TARGET=api fuzzes the API's request handling instead (Sources/SwiftletAPIFuzz, its own corpus);
# FUZZ_TARGET=vsock the virtio-vsock packet path (Sources/SwiftletFuzz/VsockFuzz.swift, built in
# .build-fuzz-vsock with -DSWIFTLET_FUZZ_VSOCK, its own corpus and log).
FUZZ_SECONDS ?= 60
FUZZ_TARGET ?= virtio
FUZZ_DIR := .build-fuzz$(if $(filter vsock,$(FUZZ_TARGET)),-vsock)
FUZZ_PRODUCT := $(if $(filter api,$(FUZZ_TARGET)),SwiftletAPIFuzz,SwiftletFuzz)
FUZZ_CORPUS := $(FUZZ_DIR)/corpus$(if $(filter api,$(FUZZ_TARGET)),-api)
fuzz: deps
	$(SWIFT) build --scratch-path $(FUZZ_DIR) -c release --product $(FUZZ_PRODUCT) \
	  -Xswiftc -sanitize=fuzzer,address -Xswiftc -DSWIFTLET_FUZZ $(if $(filter vsock,$(FUZZ_TARGET)),-Xswiftc -DSWIFTLET_FUZZ_VSOCK)
	@mkdir -p $(FUZZ_CORPUS)
	@$(FUZZ_DIR)/release/$(FUZZ_PRODUCT) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	  -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_CORPUS) > $(FUZZ_DIR)/fuzz.log 2>&1; status=$$?; \
	runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_DIR)/fuzz.log); \
	if [ $$status -eq 0 ]; then \
	  echo "fuzz: $$runs inputs in $(FUZZ_SECONDS) s, no crash (log: $(FUZZ_DIR)/fuzz.log)"; \
	else \
	  grep -m1 -E 'ERROR|panic|Fatal|fatal' $(FUZZ_DIR)/fuzz.log; \
	  echo "fuzz: CRASHED after $$runs inputs; input saved as $$(ls -t $(FUZZ_DIR)/crash-* 2>/dev/null | head -1) (log: $(FUZZ_DIR)/fuzz.log)"; \
	  exit 1; \
	fi

clean:
	$(MAKE) -C Guests clean
	rm -rf .build
