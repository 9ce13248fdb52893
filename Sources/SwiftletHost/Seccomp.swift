import CHost
import Glibc

/// A system call of this architecture, by number (`SWL_SYS_*` from the kernel headers, through
/// CHost).
package struct SystemCall: Hashable, Sendable, CustomStringConvertible {
    /// The number the kernel sees in `seccomp_data.nr` (RAX on x86_64).
    package let number: UInt32

    /// The call numbered `number`.
    package init(_ number: UInt32) { self.number = number }

    /// Its name in the kernel headers ("read"), or "unknown".
    package var name: String {
        guard let name = swl_syscall_name(Int(number)) else { return "unknown" }
        return String(cString: name)
    }

    /// `name (number)`.
    package var description: String { "\(name) (\(number))" }

    /// getppid(2): in no allowlist, so the tests' forbidden call.
    package static let getppid = SystemCall(SWL_SYS_getppid)

    /// Makes this call with no arguments (syscall(2)) and returns its result: only for calls
    /// that take none (the seccomp tests' forbidden call).
    package func callWithoutArguments() -> Int { swl_syscall0(Int(number)) }
}

/// One test on a system-call argument: `(argument & mask)` is one of `values`.
///
/// `width` says which bits the kernel reads: a 32-bit argument (`int fd`, ioctl's
/// `unsigned int cmd`) is compared in its low word only, as the kernel ignores the upper half;
/// a 64-bit one (a length, `unsigned long` flags) in both words.
package struct SeccompCondition: Hashable, Sendable {
    /// How many bits of the argument register the kernel uses.
    package enum Width: Hashable, Sendable {
        /// The low 32 bits (the upper half is ignored by the kernel and by the test).
        case low32
        /// All 64 bits.
        case full64
    }

    /// Which argument, 0 to 5.
    package var argument: Int
    /// The argument's width as the kernel reads it.
    package var width: Width
    /// The bits compared (all of them by default).
    package var mask: UInt64
    /// The values allowed after masking (at least one).
    package var values: [UInt64]

    /// `(argument & mask) ∈ values`.
    package init(argument: Int, width: Width, mask: UInt64 = .max, values: [UInt64]) {
        self.argument = argument
        self.width = width
        self.mask = mask
        self.values = values
    }

    /// A 32-bit argument equal to one of `values` (an ioctl request, an fd, a signal).
    package static func argument(_ index: Int, isOneOf values: [UInt32]) -> SeccompCondition {
        SeccompCondition(argument: index, width: .low32, values: values.map { UInt64($0) })
    }

    /// An argument with none of the bits of `forbidden` set (64-bit: flags, protections).
    package static func argument(_ index: Int, hasNoneOf forbidden: UInt64) -> SeccompCondition {
        SeccompCondition(argument: index, width: .full64, mask: forbidden, values: [0])
    }
}

/// A system call an allowlist permits: always, or when one of `alternatives` (each a list of
/// conditions that must all hold) matches its arguments.
package struct SeccompRule: Hashable, Sendable {
    /// The call.
    package var call: SystemCall
    /// Empty: allowed whatever its arguments. Otherwise allowed when all the conditions of at
    /// least one alternative hold.
    package var alternatives: [[SeccompCondition]]

    /// `call`, allowed with any arguments.
    package init(_ call: SystemCall) {
        self.call = call
        alternatives = []
    }

    /// `call`, allowed when all of `conditions` hold.
    package init(_ call: SystemCall, where conditions: SeccompCondition...) {
        self.call = call
        alternatives = [conditions]
    }

    /// `call`, allowed when all the conditions of one of `alternatives` hold.
    package init(_ call: SystemCall, whereAnyOf alternatives: [[SeccompCondition]]) {
        self.call = call
        self.alternatives = alternatives
    }
}

/// What a filter does with a call.
package enum SeccompAction: Hashable, Sendable {
    /// The call runs.
    case allow
    /// The call does not run; the thread gets SIGSYS (the handler reports it and ends the process).
    case trap
    /// The call does not run; the process is killed as by SIGSYS.
    case killProcess
    /// The call does not run and fails with this errno.
    case error(Int32)

    /// The `SECCOMP_RET_*` value a BPF `ret` returns.
    package var returnValue: UInt32 {
        switch self {
        case .allow: SWL_SECCOMP_RET_ALLOW
        case .trap: SWL_SECCOMP_RET_TRAP
        case .killProcess: SWL_SECCOMP_RET_KILL_PROCESS
        case .error(let number): SWL_SECCOMP_RET_ERRNO | (UInt32(truncatingIfNeeded: number) & 0xFFFF)
        }
    }
}

/// Why an allowlist does not compile into a filter program.
package enum SeccompCompileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The same call appears in two rules (the first would hide the second).
    case duplicateRule(SystemCall)
    /// An argument index outside 0...5.
    case badArgument(SystemCall, Int)
    /// A condition with no values, or a 32-bit condition with values or mask above 32 bits.
    case badCondition(SystemCall, String)
    /// A jump longer than classic BPF's 8-bit offsets (a rule with too many alternatives).
    case jumpTooLong(SystemCall)
    /// More than BPF_MAXINSNS instructions.
    case tooLong(Int)

    /// One line naming the call and the problem.
    package var description: String {
        switch self {
        case .duplicateRule(let call): "seccomp allowlist: \(call) appears twice"
        case .badArgument(let call, let index): "seccomp allowlist: \(call): no argument \(index) (0-5)"
        case .badCondition(let call, let why): "seccomp allowlist: \(call): \(why)"
        case .jumpTooLong(let call): "seccomp allowlist: \(call): too many alternatives for BPF's 8-bit jumps"
        case .tooLong(let count): "seccomp allowlist: \(count) instructions, more than \(SWL_BPF_MAXINSNS)"
        }
    }
}

/// A classic-BPF seccomp filter, compiled from an allowlist (Docs/SECCOMP.md).
///
/// The program checks `seccomp_data.arch` (another architecture kills the process: its numbers
/// mean other calls), refuses x32 numbers (bit 30) with the default action, then compares the
/// call number with each rule in order (list the frequent calls first: a call costs one compare
/// per rule before it), and for a rule with conditions loads and compares the arguments. A call
/// no rule allows gets the default action.
package struct SeccompFilter: Sendable {
    /// The instructions, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
    package let instructions: [sock_filter]

    /// Compiles `rules` with `defaultAction` for every call they do not allow.
    package init(rules: [SeccompRule], defaultAction: SeccompAction = .trap) throws(SeccompCompileError) {
        var seen = Set<SystemCall>()
        for rule in rules where !seen.insert(rule.call).inserted { throw .duplicateRule(rule.call) }
        var assembler = BPFAssembler()
        let refuse = assembler.newLabel()
        // Another architecture's numbers mean other calls: kill, whatever the default.
        let nativeArchitecture = assembler.newLabel()
        assembler.load(SWL_SECCOMP_DATA_ARCH)
        assembler.jumpIfEqual(SWL_SECCOMP_AUDIT_ARCH, then: nativeArchitecture, else: nil)
        assembler.ret(SeccompAction.killProcess.returnValue)
        assembler.place(nativeArchitecture)
        // x32 numbers (bit 30 set) are refused.
        let native = assembler.newLabel()
        assembler.load(SWL_SECCOMP_DATA_NR)
        assembler.jumpIfGreaterOrEqual(SWL_X32_SYSCALL_BIT, then: nil, else: native)
        assembler.ret(defaultAction.returnValue)
        assembler.place(native)
        for rule in rules {
            let next = assembler.newLabel()
            assembler.jumpIfEqual(rule.call.number, then: nil, else: next, owner: rule.call)
            if rule.alternatives.isEmpty {
                assembler.ret(SeccompAction.allow.returnValue)
            } else {
                try Self.emitConditions(of: rule, into: &assembler, refuse: refuse)
            }
            assembler.place(next)
        }
        assembler.place(refuse)
        assembler.ret(defaultAction.returnValue)
        instructions = try assembler.assemble()
        if instructions.count > Int(SWL_BPF_MAXINSNS) { throw .tooLong(instructions.count) }
    }

    /// Argument checks of one rule: each alternative falls through to the next when a condition
    /// fails; the first that holds returns ALLOW; after the last, the default action. The
    /// accumulator holds the argument word, so a rule never falls into the next rule's compare.
    private static func emitConditions(
        of rule: SeccompRule, into assembler: inout BPFAssembler, refuse: BPFAssembler.Label
    ) throws(SeccompCompileError) {
        for alternative in rule.alternatives {
            let failed = assembler.newLabel()
            for condition in alternative {
                guard (0...5).contains(condition.argument) else { throw .badArgument(rule.call, condition.argument) }
                guard !condition.values.isEmpty else { throw .badCondition(rule.call, "a condition with no values") }
                let low = SWL_SECCOMP_DATA_ARGS + UInt32(condition.argument) * 8
                let lowMask = UInt32(truncatingIfNeeded: condition.mask)
                let highMask = UInt32(truncatingIfNeeded: condition.mask >> 32)
                switch condition.width {
                case .low32:
                    guard condition.values.allSatisfy({ $0 >> 32 == 0 }) else {
                        throw .badCondition(rule.call, "a 32-bit condition with a value above 32 bits")
                    }
                case .full64:
                    // The high word first: every value must share it (flags and small numbers do).
                    let high = Set(condition.values.map { UInt32(truncatingIfNeeded: $0 >> 32) & highMask })
                    guard high.count == 1, let word = high.first else {
                        throw .badCondition(rule.call, "64-bit values with different upper halves")
                    }
                    assembler.load(low + 4)
                    if highMask != .max { assembler.and(highMask) }
                    assembler.jumpIfEqual(word, then: nil, else: failed, owner: rule.call)
                }
                assembler.load(low)
                if lowMask != .max { assembler.and(lowMask) }
                let holds = assembler.newLabel()
                let values = condition.values.map { UInt32(truncatingIfNeeded: $0) & lowMask }
                for (index, value) in values.enumerated() {
                    let last = index == values.count - 1
                    assembler.jumpIfEqual(value, then: holds, else: last ? failed : nil, owner: rule.call)
                }
                assembler.place(holds)
            }
            assembler.ret(SeccompAction.allow.returnValue)
            assembler.place(failed)
        }
        assembler.jump(to: refuse)
    }

    /// Sets no_new_privs and installs the filter on the calling thread (threads it starts
    /// afterwards inherit it; no other thread is affected). `threadKind` is what the SIGSYS
    /// report names ("vcpu"); a literal, so it lives as long as the process.
    package func install(threadKind: StaticString) throws(SystemError) {
        let result = instructions.withUnsafeBufferPointer {
            swl_seccomp_install(
                $0.baseAddress, UInt16($0.count), UnsafeRawPointer(threadKind.utf8Start).assumingMemoryBound(to: CChar.self))
        }
        if result != 0 { throw SystemError.current("seccomp(SECCOMP_SET_MODE_FILTER) for the \(threadKind) thread") }
    }

    /// Checks that this kernel takes seccomp filters with SECCOMP_RET_TRAP, and installs the
    /// process's SIGSYS handler (once).
    package static func prepareProcess() throws(SystemError) {
        if swl_seccomp_check_available() != 0 { throw SystemError.current("seccomp(SECCOMP_GET_ACTION_AVAIL, TRAP)") }
        if swl_seccomp_install_trap_handler() != 0 { throw SystemError.current("sigaction SIGSYS") }
    }

    /// The exit status of a process whose filter refused a call: 128 + SIGSYS.
    package static var refusedCallExitStatus: Int32 { SWL_SECCOMP_EXIT_STATUS }
}

/// Classic BPF with symbolic jump targets: instructions are collected with labels and the
/// offsets (8-bit for conditional jumps) resolved at the end.
struct BPFAssembler {
    struct Label: Hashable { let id: Int }

    private enum Item {
        case plain(code: UInt16, k: UInt32)
        case conditional(code: UInt16, k: UInt32, then: Label?, else: Label?, owner: SystemCall?)
        case always(Label)
    }

    private var items: [Item] = []
    private var positions: [Int: Int] = [:]
    private var labels = 0

    mutating func newLabel() -> Label {
        labels += 1
        return Label(id: labels)
    }

    /// Binds `label` to the next instruction.
    mutating func place(_ label: Label) { positions[label.id] = items.count }

    mutating func load(_ offset: UInt32) { items.append(.plain(code: SWL_BPF_LD_W_ABS, k: offset)) }
    mutating func and(_ mask: UInt32) { items.append(.plain(code: SWL_BPF_ALU_AND_K, k: mask)) }
    mutating func ret(_ value: UInt32) { items.append(.plain(code: SWL_BPF_RET_K, k: value)) }
    mutating func jump(to label: Label) { items.append(.always(label)) }

    /// `if A == k goto then else goto else`; nil means the next instruction.
    mutating func jumpIfEqual(_ k: UInt32, then: Label?, else otherwise: Label?, owner: SystemCall? = nil) {
        items.append(.conditional(code: SWL_BPF_JMP_JEQ_K, k: k, then: then, else: otherwise, owner: owner))
    }

    /// `if A >= k goto then else goto else`.
    mutating func jumpIfGreaterOrEqual(_ k: UInt32, then: Label?, else otherwise: Label?) {
        items.append(.conditional(code: SWL_BPF_JMP_JGE_K, k: k, then: then, else: otherwise, owner: nil))
    }

    func assemble() throws(SeccompCompileError) -> [sock_filter] {
        var program: [sock_filter] = []
        program.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            switch item {
            case .plain(let code, let k):
                program.append(sock_filter(code: code, jt: 0, jf: 0, k: k))
            case .always(let label):
                let offset = positions[label.id]! - index - 1
                program.append(sock_filter(code: SWL_BPF_JMP_JA, jt: 0, jf: 0, k: UInt32(offset)))
            case .conditional(let code, let k, let then, let otherwise, let owner):
                func offset(_ label: Label?) throws(SeccompCompileError) -> UInt8 {
                    guard let label else { return 0 }
                    let distance = positions[label.id]! - index - 1
                    guard distance <= 255 else { throw .jumpTooLong(owner ?? SystemCall(0)) }
                    return UInt8(distance)
                }
                program.append(sock_filter(code: code, jt: try offset(then), jf: try offset(otherwise), k: k))
            }
        }
        return program
    }
}
