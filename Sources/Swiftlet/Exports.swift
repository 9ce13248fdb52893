// What an embedder gets with `import Swiftlet`: the machine API here, plus the layers whose
// types that API shows (guest memory and addresses, the devices a machine hands out, their
// backends' errors, `SystemError`). The KVM wrapper is not re-exported: its API is `package`,
// for the library's own targets and tests only.
@_exported import SwiftletBackends
@_exported import SwiftletDevices
@_exported import SwiftletHost
@_exported import SwiftletMemory
