import CLibFDT
import Swiftlet
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// A libfdt call that failed, or a request libfdt would have turned into a malformed tree.
///
/// `code` is libfdt's error number as a positive value (`FDT_ERR_EXISTS`, `FDT_ERR_NOTFOUND`...;
/// the functions return it negated) and `message` is `fdt_strerror`'s text for it. Requests the
/// builder refuses before calling libfdt (a node name with a `/`, a string with a NUL) carry
/// the libfdt code that fits best: `FDT_ERR_BADPATH` for node names, `FDT_ERR_BADVALUE` for
/// property names and values.
package struct FDTError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What was attempted, e.g. `add node "cpu@0" under /cpus`.
    package let operation: String
    /// The libfdt error number, positive (`FDT_ERR_*`).
    package let code: Int32

    /// An error for `operation` with libfdt error `code`, negative or positive (stored positive).
    package init(_ operation: String, code: Int32) {
        self.operation = operation
        self.code = code < 0 ? -code : code
    }

    /// libfdt's text for `code` (`fdt_strerror`), e.g. `FDT_ERR_EXISTS`.
    package var message: String { String(cString: fdt_strerror(-code)) }

    /// `operation: message`, e.g. `add node "cpu@0" under /cpus: FDT_ERR_EXISTS`.
    package var description: String { "\(operation): \(message)" }

    /// Throws for a negative libfdt return value; returns non-negative ones.
    @discardableResult
    static func check(_ result: Int32, _ operation: @autoclosure () -> String) throws(FDTError) -> Int32 {
        if result < 0 { throw FDTError(operation(), code: result) }
        return result
    }
}
