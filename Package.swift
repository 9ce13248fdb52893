// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Swiftlet",
    products: [
        .library(name: "Swiftlet", targets: ["Swiftlet"]),
        .executable(name: "swiftlet", targets: ["swiftlet"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
    ],
    targets: [
        // C shim: ioctl request numbers, fixed-signature ioctl wrappers, eventfd helpers.
        .target(name: "CKVM"),
        // The VMM library. It must not import Foundation (start time and memory goals).
        .target(
            name: "Swiftlet",
            dependencies: ["CKVM"]
        ),
        // The command-line front end: argument parsing only, everything else is the library.
        .executableTarget(
            name: "swiftlet",
            dependencies: [
                "Swiftlet",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "SwiftletTests",
            dependencies: ["Swiftlet", "CKVM"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
