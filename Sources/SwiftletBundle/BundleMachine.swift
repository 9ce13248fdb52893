import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

extension ContainerBundle {
    /// The kernel command-line words that put Swiftlet's init into bundle mode (Docs/RUN.md);
    /// `quiet` keeps the kernel's log off the process's output.
    public static let bundleCommandLine = "quiet swiftlet.bundle=1"

    /// The machine that runs this bundle: `base` (memory, vCPUs, network interfaces and extra
    /// disks as the user gave them) with `kernel`, its initramfs and command line, the root disk
    /// `rootImage` as the first disk (`/dev/vda`, read-only when `root.readonly`) and the spec disk
    /// `specImage` second (`/dev/vdb`); `base.disks` follow. Nothing is read or checked here.
    public func machineConfiguration(kernel: GuestKernel, rootImage: String, specImage: String, base: MachineConfiguration)
        -> MachineConfiguration
    {
        var configuration = base
        configuration.kernelPath = kernel.kernelPath
        configuration.initrdPath = kernel.initrdPath
        configuration.commandLine = [LinuxBoot.defaultCommandLine, kernel.extraCommandLine, Self.bundleCommandLine]
            .filter { !$0.isEmpty }.joined(separator: " ")
        configuration.cpuidMask = kernel.cpuidMask
        configuration.disks =
            [
                DiskConfiguration(path: rootImage, readOnly: rootReadOnly, id: "swiftlet-root"),
                DiskConfiguration(path: specImage, readOnly: true, id: "swiftlet-spec"),
            ] + base.disks
        return configuration
    }

    /// Makes the disks and returns the machine's configuration (`machineConfiguration`): the
    /// cached root image (built if needed; a per-run copy when the root is writable, so the cache
    /// never changes) and the spec disk, both per-run files in `<cache>/run/` that
    /// `BundleRun.removeFiles()` deletes (`name`, the container's, prefixes them).
    public func prepare(
        kernel: GuestKernel, base: MachineConfiguration, name: String? = nil, cacheDirectory: String = GuestKernel.cacheDirectory
    ) throws(ImageError) -> BundleRun {
        let image = try RootFilesystemImage.image(for: rootPath, cacheDirectory: cacheDirectory)
        let runDirectory = cacheDirectory + "/run"
        try RootFilesystemImage.makeDirectory(runDirectory)
        let prefix = "\(runDirectory)/\(name.map { $0 + "-" } ?? "")\(getpid())"
        var run = BundleRun(configuration: base, files: [])
        do throws(ImageError) {
            var root = image
            if !rootReadOnly {
                root = prefix + "-root.ext4"
                run.files.append(root)
                try RootFilesystemImage.copySparse(image, to: root)
            }
            let spec = prefix + "-spec.img"
            run.files.append(spec)
            try RootFilesystemImage.writeFile(ProcessSpec.encode(self), to: spec)
            run.configuration = machineConfiguration(kernel: kernel, rootImage: root, specImage: spec, base: base)
        } catch {
            run.removeFiles()
            throw error
        }
        return run
    }
}

/// A bundle ready to boot: the machine's configuration and the per-run files it uses.
public struct BundleRun: Sendable {
    /// The configuration to build the `Machine` from.
    public var configuration: MachineConfiguration
    /// The per-run disk files (spec disk, writable root copy).
    public var files: [String]

    /// Deletes the per-run files (after the machine has ended, or once it has opened them).
    public func removeFiles() {
        for file in files { unlink(file) }
    }
}
