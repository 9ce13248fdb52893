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
        // libfdt, the device-tree library (Debian's libfdt-dev ships no pkg-config file: the
        // module map links "fdt" directly; a missing libfdt.pc only gives a warning).
        .systemLibrary(name: "CLibFDT", path: "Sources/CLibFDT", pkgConfig: "libfdt", providers: [.apt(["libfdt-dev"])]),
        // The VMM library. It must not import Foundation (start time and memory goals).
        .target(
            name: "Swiftlet",
            dependencies: ["CKVM", "CLibFDT"],
            exclude: ["Arch/README.md"]
        ),
        // The command line: option declarations, the key=value grammar of device options, help
        // and the commands (hand-written, no Foundation: start time and memory); everything else
        // is the library. A target of its own so tests can parse command lines in-process.
        .target(
            name: "SwiftletCommandLine",
            dependencies: ["Swiftlet"]
        ),
        // The `swiftlet` executable: a thin @main that calls SwiftletCommandLine.
        .executableTarget(
            name: "swiftlet",
            dependencies: ["Swiftlet", "SwiftletCommandLine"]
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
            dependencies: ["Swiftlet", "SwiftletCommandLine", "CKVM"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
