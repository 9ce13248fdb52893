// swift-tools-version:6.0
import PackageDescription

// The targets are the layers (Docs/DESIGN.md, "Targets"); each imports only the ones below it:
//
//   CHost, CKVM,           C shims: ioctl/eventfd/tun/pty wrappers; KVM request numbers;
//   CGuestAtomics          acquire/release accesses to guest memory (ring indices)
//   SwiftletHost           host primitives: SystemError, descriptors, eventfd, threads, clocks
//   SwiftletMemory         guest physical addresses and guest RAM
//   SwiftletKVM            the KVM wrapper: /dev/kvm, the VM, vCPUs, exits (package-only API)
//   SwiftletDevices        buses and device models (UART, i8042, virtio transport, queue, blk,
//                          net, rng): no KVM, testable by construction
//   SwiftletBackends       host backends of devices: raw disk images, taps
//   Swiftlet               x86 boot, the machine builder, device manager and runtime; the
//                          public API embedders import
//   SwiftletDeviceTree     flattened device trees over libfdt, the aarch64 description (the
//                          only target linking libfdt; the CLI's dump-dtb)
//   SwiftletTestSupport    fakes for tests and fuzzing (InMemoryDiskImage)
//   SwiftletBundle         OCI runtime bundles as machine configurations (FoundationEssentials'
//                          JSONDecoder; linked only by swiftlet-run)
//   SwiftletAPI            the Firecracker-compatible API: models, the VMM state machine, the
//                          config-file loader, the HTTP/1.1 server on a Unix socket (SwiftNIO,
//                          FoundationEssentials' JSON; linked only by swiftlet-api)
let package = Package(
    name: "Swiftlet",
    products: [
        .library(name: "Swiftlet", targets: ["Swiftlet"]),
        .executable(name: "swiftlet", targets: ["swiftlet"]),
        .executable(name: "swiftlet-run", targets: ["swiftlet-run"]),
        .executable(name: "swiftlet-api", targets: ["swiftlet-api"]),
    ],
    dependencies: [
        // The API socket's HTTP/1.1 server (SwiftletAPI only; `swiftlet boot` never links it).
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3")
    ],
    targets: [
        .target(name: "CHost"),
        .target(name: "CKVM", dependencies: ["CHost"]),
        // Acquire loads and release stores of 16-bit fields in guest memory (the virtqueue ring
        // indices), which Swift's Atomic cannot be placed over. Device code uses it; it does not
        // depend on the KVM layer.
        .target(name: "CGuestAtomics"),
        // libfdt, the device-tree library (Debian's libfdt-dev ships no pkg-config file: the
        // module map links "fdt" directly; a missing libfdt.pc only gives a warning).
        .systemLibrary(name: "CLibFDT", path: "Sources/CLibFDT", pkgConfig: "libfdt", providers: [.apt(["libfdt-dev"])]),
        // No target of the library imports Foundation (start time and memory goals).
        .target(name: "SwiftletHost", dependencies: ["CHost"]),
        .target(name: "SwiftletMemory", dependencies: ["SwiftletHost"]),
        .target(name: "SwiftletKVM", dependencies: ["CKVM", "CHost", "SwiftletHost", "SwiftletMemory"]),
        .target(name: "SwiftletDevices", dependencies: ["CHost", "CGuestAtomics", "SwiftletHost", "SwiftletMemory"]),
        .target(name: "SwiftletBackends", dependencies: ["CHost", "SwiftletHost", "SwiftletMemory", "SwiftletDevices"]),
        .target(
            name: "Swiftlet",
            dependencies: [
                "CKVM", "CHost", "SwiftletHost", "SwiftletMemory", "SwiftletKVM", "SwiftletDevices", "SwiftletBackends",
            ],
            exclude: ["Arch/README.md"]
        ),
        .target(name: "SwiftletDeviceTree", dependencies: ["CLibFDT", "Swiftlet"]),
        .target(name: "SwiftletTestSupport", dependencies: ["SwiftletMemory", "SwiftletDevices"]),
        // OCI runtime bundles (config.json + a root filesystem) as microVMs: the config model, its
        // validation into a ContainerBundle, the ext4 root image and the process-spec disk. The
        // only library target that reads JSON: it imports FoundationEssentials (JSONDecoder), so
        // it is linked by `swiftlet-run`, never by `swiftlet` (start time and memory of `boot`).
        .target(name: "SwiftletBundle", dependencies: ["CHost", "Swiftlet"]),
        // The command line: option declarations, the key=value grammar of device options, help
        // and the commands (hand-written, no Foundation: start time and memory); everything else
        // is the library. A target of its own so tests can parse command lines in-process.
        .target(
            name: "SwiftletCommandLine",
            dependencies: ["Swiftlet", "SwiftletDeviceTree"]
        ),
        // Firecracker's API (Docs/API-SOCKET.md): request models, the VMM state machine over the
        // library's Machine, the config-file loader and the NIO HTTP/1.1 server on a Unix socket.
        // Like SwiftletBundle it reads JSON (FoundationEssentials), and it links SwiftNIO: only
        // `swiftlet-api`, which `swiftlet --api-sock` execs, links it.
        .target(
            name: "SwiftletAPI",
            dependencies: [
                "Swiftlet", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The `swiftlet` executable: a thin @main that calls SwiftletCommandLine.
        .executableTarget(
            name: "swiftlet",
            dependencies: ["Swiftlet", "SwiftletCommandLine"]
        ),
        // `swiftlet run`: `swiftlet` parses the command line and execs this binary, found beside
        // it, so that Foundation's JSON decoder never loads into `swiftlet boot`.
        .executableTarget(
            name: "swiftlet-run",
            dependencies: ["Swiftlet", "SwiftletBundle", "SwiftletCommandLine"]
        ),
        // `swiftlet --api-sock` / `--config-file`: `swiftlet` checks the command line and execs this
        // binary, found beside it, so that NIO and JSON never load into `swiftlet boot`.
        .executableTarget(
            name: "swiftlet-api",
            dependencies: ["Swiftlet", "SwiftletAPI", "SwiftletCommandLine"]
        ),
        // libFuzzer target for the virtqueue walker and the virtio-mmio transport. A plain build
        // gets a stub; `make fuzz` builds it with -sanitize=fuzzer -DSWIFTLET_FUZZ and runs it.
        .executableTarget(
            name: "SwiftletFuzz",
            dependencies: ["SwiftletMemory", "SwiftletDevices", "SwiftletTestSupport"]
        ),
        // libFuzzer target for the API's request handling: raw bytes through NIO's HTTP decoder,
        // the router, the JSON models and the VMM state machine (over a machine that is never
        // built). `make fuzz FUZZ_TARGET=api`; a plain build gets a stub.
        .executableTarget(
            name: "SwiftletAPIFuzz",
            dependencies: [
                "SwiftletAPI", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // An example of embedding the library (Docs/API.md): boots a tiny guest, prints its console.
        .executableTarget(
            name: "swiftlet-example",
            dependencies: ["Swiftlet"],
            path: "Examples/BootTinyGuest"
        ),
        .testTarget(
            name: "SwiftletTests",
            dependencies: [
                "Swiftlet", "SwiftletHost", "SwiftletMemory", "SwiftletKVM", "SwiftletDevices", "SwiftletBackends",
                "SwiftletDeviceTree", "SwiftletCommandLine", "SwiftletTestSupport", "SwiftletBundle", "SwiftletAPI", "CKVM",
                "CHost", "CLibFDT",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
