# Swiftlet: build, test and run.
#   make run     install what is missing, build, boot the long-mode tiny guest
#   make test    install what is missing, build the tiny guests, run every test suite
#   make guests  build the tiny test guests (Guests/build/)
#   make build   debug build;  make release: the optimised build users install

SWIFT ?= swift
SWIFTLET_DEBUG := .build/debug/swiftlet
SWIFTLET_RELEASE := .build/release/swiftlet
# Debian packages the build, the guests and the tests need.
APT_PACKAGES := gcc binutils make libc6-dev

.PHONY: all deps build release guests test run clean

all: build guests

# Installs missing Debian packages (apt-get update only when something is missing).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v $(SWIFT) >/dev/null || { echo "swift not found: install Swift 6 (https://swift.org/install) and put it on PATH" >&2; exit 1; }

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --static-swift-stdlib

guests: deps
	$(MAKE) -C Guests tiny

test: deps guests
	$(SWIFT) test

run: build guests
	$(SWIFTLET_DEBUG) boot --kernel Guests/build/longmode-hello.elf

clean:
	$(MAKE) -C Guests clean
	rm -rf .build
