import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Snapshots: saving a machine to a directory and building one again from it (Docs/DESIGN.md,
/// "Snapshots").
extension Machine {
    /// Saves the machine to `directory` (created if missing): `state`, the versioned state file
    /// (vCPUs, VM, devices, configuration), and `memory`, guest RAM written sparsely (all-zero
    /// pages are holes). Disks are not copied; their paths and sizes are recorded.
    ///
    /// A running machine is paused for the snapshot and resumed after it; a paused one stays
    /// paused. Device state and memory are read on the event-loop thread between two handlers,
    /// so no device works on guest memory meanwhile. Works before `start()` too.
    public func snapshot(to directory: String) throws(SnapshotError) {
        let wasPaused = isPaused
        if !wasPaused { pause() }
        defer { if !wasPaused { resume() } }
        var outcome: Result<Void, SnapshotError> = .success(())
        eventLoop.perform {
            outcome = Result { () throws(SnapshotError) in try self.writeSnapshot(to: directory) }
        }
        try outcome.get()
    }

    private func writeSnapshot(to directory: String) throws(SnapshotError) {
        if configuration.mmioTestDevice { throw .unsupportedDevice(AttachedDevice.Kind.mmioTestDevice.rawValue) }
        if mkdir(directory, 0o755) != 0 && errno != EEXIST {
            throw .file(path: directory, SystemError.current("mkdir"))
        }
        let state: SnapshotState
        do throws(SystemError) {
            let msrIndices = try kvm.msrIndexList()
            let hasXSAVE = kvm.capability(KVM_CAP_XSAVE) != 0
            let hasXCRS = kvm.capability(KVM_CAP_XCRS) != 0
            let savedVCPUs = try vcpus.map { (vcpu) throws(SystemError) in
                try SavedVCPU(vcpu, msrIndices: msrIndices, hasXSAVE: hasXSAVE, hasXCRS: hasXCRS)
            }
            state = SnapshotState(
                kernelPath: configuration.kernelPath, kernelFormat: kernel.format.rawValue, entry: SavedEntry(kernel.entry),
                kernelEnd: kernel.end.rawValue, memorySize: configuration.memorySize, vcpuCount: configuration.vcpuCount,
                bootTimer: configuration.bootTimer, rng: configuration.rng,
                disks: zip(configuration.disks, disks).map { disk, transport in
                    SavedDisk(
                        path: disk.path, readOnly: disk.readOnly, id: disk.id, directIO: disk.directIO,
                        size: transport.saveState().device.settings.capacity * VirtioBlock.sectorSize,
                        rateLimit: disk.rateLimit)
                },
                networks: configuration.networks.map {
                    SavedNetwork(
                        tap: $0.tap, mac: $0.mac?.rawValue, offloads: $0.offloads, receiveRateLimit: $0.receiveRateLimit,
                        transmitRateLimit: $0.transmitRateLimit)
                },
                devices: devices.map { SavedDevice(kind: $0.kind.rawValue, name: $0.name) },
                vcpus: savedVCPUs, vm: try SavedVM(vm), serial: serial.saveState(), i8042: i8042.saveState(),
                bootTimerState: bootTimer?.saveState(), exitStatus: exitStatus.saveState(),
                diskStates: disks.map { $0.saveState() }, networkStates: networkInterfaces.map { $0.saveState() },
                rngState: rng?.saveState(),
                vsock: configuration.vsock.map { SavedVsock(guestCID: $0.guestCID, udsPath: $0.udsPath) },
                vsockState: vsock?.saveState())
        } catch {
            throw .kvm(error)
        }
        try writeMemory(to: directory + "/" + SnapshotFile.memoryName)
        let payload: [UInt8]
        do { payload = try BinaryEncoder.encode(state) } catch {
            throw .malformed(path: SnapshotFile.stateName, "cannot encode: \(error)")
        }
        let path = directory + "/" + SnapshotFile.stateName
        let file = SnapshotFile.encode(payload: payload)
        let fd = try SnapshotIO.create(path)
        defer { close(fd) }
        var written: Result<Void, SnapshotError> = .success(())
        file.withUnsafeBytes { raw in
            written = Result { () throws(SnapshotError) in
                try SnapshotIO.write(fd, raw.baseAddress!, count: raw.count, at: 0, path: path)
            }
        }
        try written.get()
    }

    /// Guest RAM, region after region, skipping all-zero 4 KiB pages (left as holes).
    private func writeMemory(to path: String) throws(SnapshotError) {
        let fd = try SnapshotIO.create(path)
        defer { close(fd) }
        let page = 4096
        var fileOffset = 0
        for region in memory.regions {
            let base = UnsafeRawPointer(region.host)
            let size = Int(region.size)
            var runStart: Int? = nil
            var offset = 0
            while offset <= size {
                let zero = offset == size || Self.isZeroPage(base + offset, page)
                if zero, let start = runStart {
                    try SnapshotIO.write(fd, base + start, count: offset - start, at: fileOffset + start, path: path)
                    runStart = nil
                } else if !zero && runStart == nil {
                    runStart = offset
                }
                offset += page
            }
            fileOffset += size
        }
        if ftruncate(fd, off_t(fileOffset)) != 0 { throw .file(path: path, SystemError.current("ftruncate")) }
    }

    private static func isZeroPage(_ pointer: UnsafeRawPointer, _ size: Int) -> Bool {
        let words = pointer.assumingMemoryBound(to: UInt64.self)
        for i in 0..<(size / 8) where words[i] != 0 { return false }
        return true
    }

    /// Builds a machine from the snapshot in `directory`, ready to `start()`: its vCPUs go on
    /// where they stopped. Guest RAM is mapped privately from the memory file (copy on write:
    /// the snapshot never changes and may be restored many times at once); devices are rebuilt
    /// from their saved state, with their host resources opened again: disk `i` from
    /// `diskPaths[i]` if given, else its saved path (and it must have its saved size); network
    /// interface `i` on `taps[i]` if given, else its saved tap; the vsock socket at `vsockPath` if
    /// given, else its saved path (listened on again; the guest gets a transport reset). With `privilegeDrop`, `start()`
    /// changes to that user once everything is open, as for a booted machine (it is not part of
    /// the snapshot); `seccomp` is `MachineConfiguration.seccomp`. Fails, rolling back like any build, with a `MachineError` whose underlying
    /// error is a `SnapshotError` for a missing, truncated, corrupted or wrong-version file.
    public convenience init(
        restoringFrom directory: String, console: ConsoleConfiguration = .terminal, diskPaths: [String] = [],
        taps: [String] = [], vsockPath: String? = nil, privilegeDrop: PrivilegeDrop? = nil, seccomp: Bool = true
    ) throws(MachineError) {
        self.init(
            parts: try MachineBuilder.restore(
                directory: directory, console: console, diskPaths: diskPaths, taps: taps, vsockPath: vsockPath,
                privilegeDrop: privilegeDrop, seccomp: seccomp))
    }

    /// Waits until the guest writes the boot-timer port, then pauses the machine (the vCPU
    /// that wrote is stopped right after the write) and returns true; returns false if the
    /// machine ends first or has no boot timer.
    public func pauseWhenReady() -> Bool {
        guard let bootTimer else { return false }
        let control = self.control
        // The writing vCPU asks for the pause itself, so it parks right after its write.
        bootTimer.onMark { control.requestPause() }
        control.waitUntil { bootTimer.bootNanoseconds != nil || control.isStopping }
        if control.isStopping { return false }
        pause()
        return true
    }
}

extension MachineBuilder {
    /// The parts of the machine saved in `directory` (`Machine(restoringFrom:...)`); `failingAfter`
    /// makes the restore fail right after that step (tests of the rollback).
    static func restore(
        directory: String, console: ConsoleConfiguration, diskPaths: [String], taps: [String],
        vsockPath: String? = nil, privilegeDrop: PrivilegeDrop? = nil, seccomp: Bool = true, failingAfter: BuildStep? = nil
    ) throws(MachineError) -> MachineParts {
        let rollback = BuildRollback()
        do {
            return try restoreParts(
                directory: directory, console: console, diskPaths: diskPaths, taps: taps, vsockPath: vsockPath,
                privilegeDrop: privilegeDrop, seccomp: seccomp, steps: Steps(failingAfter: failingAfter),
                rollback: rollback)
        } catch {
            rollback.run()
            throw error
        }
    }

    /// Reads and checks the state file, and opens the memory file, checking its size.
    static func readSnapshot(directory: String) throws(SnapshotError) -> (SnapshotState, OwnedFileDescriptor) {
        let statePath = directory + "/" + SnapshotFile.stateName
        let payload = try SnapshotFile.payload(of: try SnapshotIO.readAll(statePath), path: statePath)
        let state: SnapshotState
        do { state = try BinaryDecoder.decode(SnapshotState.self, from: payload) } catch {
            throw .malformed(path: statePath, "\(error)")
        }
        guard state.vcpus.count == state.vcpuCount, state.vcpuCount >= 1,
            state.diskStates.count == state.disks.count, state.networkStates.count == state.networks.count,
            (state.rngState != nil) == state.rng, (state.bootTimerState != nil) == state.bootTimer,
            (state.vsockState != nil) == (state.vsock != nil)
        else { throw .malformed(path: statePath, "device or vCPU counts disagree with the configuration") }
        let memoryPath = directory + "/" + SnapshotFile.memoryName
        let fd = open(memoryPath, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw .file(path: memoryPath, SystemError.current("open")) }
        let memoryFile = OwnedFileDescriptor(taking: fd)
        var info = stat()
        if fstat(fd, &info) != 0 { throw .file(path: memoryPath, SystemError.current("fstat")) }
        guard UInt64(info.st_size) == state.memorySize else {
            throw .memorySizeMismatch(path: memoryPath, size: UInt64(info.st_size), expected: state.memorySize)
        }
        return (state, memoryFile)
    }

    private static func restoreParts(
        directory: String, console: ConsoleConfiguration, diskPaths: [String], taps: [String], vsockPath: String?,
        privilegeDrop: PrivilegeDrop?, seccomp: Bool, steps: Steps, rollback: BuildRollback
    ) throws(MachineError) -> MachineParts {
        let (state, memoryFile) = try steps.run(.readSnapshot) { () throws(SnapshotError) in
            try readSnapshot(directory: directory)
        }
        var configuration = MachineConfiguration(
            kernelPath: state.kernelPath, kernelFormat: KernelFormat(rawValue: state.kernelFormat) ?? .automatic,
            memorySize: state.memorySize, vcpuCount: state.vcpuCount, console: console, rng: state.rng,
            bootTimer: state.bootTimer)
        configuration.disks = state.disks.map {
            DiskConfiguration(path: $0.path, readOnly: $0.readOnly, id: $0.id, directIO: $0.directIO, rateLimit: $0.rateLimit)
        }
        configuration.networks = state.networks.map {
            NetworkConfiguration(
                tap: $0.tap, mac: $0.mac.map(MACAddress.init(rawValue:)), offloads: $0.offloads,
                receiveRateLimit: $0.receiveRateLimit, transmitRateLimit: $0.transmitRateLimit)
        }
        try steps.run(.validateConfiguration) { () throws(SnapshotError) in
            guard diskPaths.count <= state.disks.count else {
                throw .tooManyOverrides(kind: "--disk", given: diskPaths.count, saved: state.disks.count)
            }
            guard taps.count <= state.networks.count else {
                throw .tooManyOverrides(kind: "--net", given: taps.count, saved: state.networks.count)
            }
            for (index, path) in diskPaths.enumerated() { configuration.disks[index].path = path }
            for (index, tap) in taps.enumerated() { configuration.networks[index].tap = tap }
        }
        configuration.vsock = state.vsock.map { VsockConfiguration(guestCID: $0.guestCID, udsPath: vsockPath ?? $0.udsPath) }
        if vsockPath != nil && state.vsock == nil {
            throw MachineError(
                step: .validateConfiguration, underlying: SnapshotError.tooManyOverrides(kind: "--vsock", given: 1, saved: 0))
        }
        configuration.privilegeDrop = privilegeDrop
        configuration.seccomp = seccomp
        try steps.run(.validateConfiguration) { () throws(ConfigurationError) in try configuration.validate() }
        if let privilegeDrop {
            try steps.run(.dropPrivileges) { () throws(PrivilegeDropError) in try privilegeDrop.checkPermitted() }
        }
        try steps.run(.validateConfiguration) { () throws(SnapshotError) in
            for (index, disk) in configuration.disks.enumerated() {
                var info = stat()
                guard stat(disk.path, &info) == 0 else { continue }  // attaching names the error
                let size = UInt64(info.st_size)
                let sector = VirtioBlock.sectorSize
                if (info.st_mode & S_IFMT) == S_IFREG, size / sector != state.disks[index].size / sector {
                    throw .diskSizeChanged(index: index, path: disk.path, size: size, saved: state.disks[index].size)
                }
            }
        }
        let (kvm, vm) = try createVM(steps)
        let memory = try steps.run(.allocateMemory) { () throws in
            try GuestMemory(
                mappingPrivately: memoryFile.rawValue, regions: X86MemoryMap.ramRegions(size: configuration.memorySize))
        }
        try steps.run(.registerMemory) { () throws(SystemError) in try vm.register(memory) }
        let vcpus = try steps.run(.createVCPUs) { () throws(SystemError) in
            try (0..<configuration.vcpuCount).map { (id) throws(SystemError) in try vm.createVCPU(id: UInt32(id)) }
        }
        let devices = try steps.run(.createDevices) { () throws in
            try createDevices(configuration, vm: vm, memory: memory, vcpus: vcpus, rollback: rollback, restoring: state)
        }
        try steps.run(.restoreState) { () throws(SnapshotError) in
            try state.vm.apply(to: vm)
            for (index, vcpu) in vcpus.enumerated() { try state.vcpus[index].apply(to: vcpu, index: index) }
        }
        let kernel = LoadedKernel(
            format: configuration.kernelFormat, entry: state.entry.mode, end: GuestAddress(state.kernelEnd))
        return MachineParts(
            configuration: configuration, kvm: kvm, vm: vm, memory: memory, vcpus: vcpus, kernel: kernel,
            bootParams: nil, eventLoop: devices.eventLoop, control: devices.control, terminal: devices.terminal,
            consoleWriter: devices.consoleWriter, consoleInput: devices.consoleInput, serial: devices.serial,
            i8042: devices.i8042, bootTimer: devices.bootTimer, exitStatus: devices.exitStatus, disks: devices.disks,
            networkInterfaces: devices.networks, rng: devices.rng, vsock: devices.vsock?.0, vsockHost: devices.vsock?.1,
            devices: devices.manager.attached,
            dispatcher: ExitDispatcher(portIO: devices.manager.portIO, mmio: devices.manager.mmio))
    }
}
