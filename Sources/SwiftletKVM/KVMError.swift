import CHost
import CKVM
import Glibc
import SwiftletHost
import SwiftletMemory

/// A KVM host that lacks something Swiftlet needs (an API version, a capability).
package struct KVMUnsupportedError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What the host lacks, e.g. `API version 12` or a capability name such as `KVM_CAP_IRQFD`.
    package let requirement: String
    /// What the host reported instead, e.g. `KVM_CHECK_EXTENSION returned 0`.
    package let detail: String
    /// `KVM host does not support <requirement>: <detail>`.
    package var description: String { "KVM host does not support \(requirement): \(detail)" }
}
