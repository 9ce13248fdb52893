// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Swiftlet",
    products: [
        .library(name: "Swiftlet", targets: ["Swiftlet"]),
        .executable(name: "swiftlet", targets: ["swiftlet"]),
    ],
    targets: [
        // C shim: ioctl request numbers, fixed-signature ioctl wrappers, eventfd helpers.
        .target(name: "CKVM"),
        // Acquire loads and release stores of 16-bit fields in guest memory (the virtqueue ring
        // indices), which Swift's Atomic cannot be placed over. Device code uses it; it does not
        // depend on the KVM layer.
        .target(name: "CGuestAtomics"),
        // libfdt, the device-tree library (Debian's libfdt-dev ships no pkg-config file: the
        // module map links "fdt" directly; a missing libfdt.pc only gives a warning).
        .systemLibrary(name: "CLibFDT", path: "Sources/CLibFDT", pkgConfig: "libfdt", providers: [.apt(["libfdt-dev"])]),
        // The VMM library. It must not import Foundation (start time and memory goals).
        .target(
            name: "Swiftlet",
            dependencies: ["CKVM", "CGuestAtomics", "CLibFDT"],
            exclude: ["Arch/README.md"]
        ),
        // The command-line front end: argument parsing only (hand-written, no Foundation: start
        // time and memory), everything else is the library.
        .executableTarget(
            name: "swiftlet",
            dependencies: ["Swiftlet"]
        ),
        // libFuzzer target for the virtqueue walker and the virtio-mmio transport. A plain build
        // gets a stub; `make fuzz` builds it with -sanitize=fuzzer -DSWIFTLET_FUZZ and runs it.
        .executableTarget(
            name: "SwiftletFuzz",
            dependencies: ["Swiftlet"]
        ),
        // An example of embedding the library (Docs/API.md): boots a tiny guest, prints its console.
        .executableTarget(
            name: "swiftlet-example",
            dependencies: ["Swiftlet"],
            path: "Examples/BootTinyGuest"
        ),
        .testTarget(
            name: "SwiftletTests",
            dependencies: ["Swiftlet", "CKVM"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
