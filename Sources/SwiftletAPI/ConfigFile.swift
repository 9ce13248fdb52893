import Glibc

/// `--config-file`: Firecracker's JSON configuration document, applied through the same
/// requests an API client would make, in Firecracker's order, then `InstanceStart`.
public enum ConfigFile {
    /// A configuration file that cannot be read or applied.
    public struct LoadError: Error, CustomStringConvertible {
        /// One line naming the file and what is wrong.
        public let description: String
    }

    /// Reads `path`, applies it to `controller` and starts the guest.
    public static func boot(_ path: String, controller: VMMController) throws(LoadError) {
        let bytes = try read(path)
        let model: FullConfigurationModel
        do { model = try APIJSON.decode(FullConfigurationModel.self, from: bytes) } catch {
            throw LoadError(description: "config file \(path): \(error.message)")
        }
        try apply(model, to: controller, file: path)
    }

    /// Applies `model` to `controller` as requests, then InstanceStart.
    public static func apply(_ model: FullConfigurationModel, to controller: VMMController, file: String) throws(LoadError) {
        if let key = model.unsupportedKeys.first {
            throw LoadError(description: "config file \(file): \(key) is not supported by Swiftlet")
        }
        var requests: [(String, String, [UInt8])] = []
        if let logger = model.logger { requests.append(("/logger", "logger", APIJSON.encode(logger))) }
        if let metrics = model.metrics { requests.append(("/metrics", "metrics", APIJSON.encode(metrics))) }
        if let machine = model.machineConfig { requests.append(("/machine-config", "machine-config", APIJSON.encode(machine))) }
        if let boot = model.bootSource { requests.append(("/boot-source", "boot-source", APIJSON.encode(boot))) }
        for (index, drive) in model.drives.enumerated() {
            requests.append(("/drives/\(drive.driveID)", "drives[\(index)]", APIJSON.encode(drive)))
        }
        for (index, network) in model.networkInterfaces.enumerated() {
            requests.append(("/network-interfaces/\(network.ifaceID)", "network-interfaces[\(index)]", APIJSON.encode(network)))
        }
        if let vsock = model.vsock { requests.append(("/vsock", "vsock", APIJSON.encode(vsock))) }
        if let entropy = model.entropy { requests.append(("/entropy", "entropy", APIJSON.encode(entropy))) }
        requests.append(("/actions", "InstanceStart", Array(#"{"action_type":"InstanceStart"}"#.utf8)))
        for (path, what, body) in requests {
            let response = controller.handle(method: "PUT", path: path, body: body)
            guard response.status == 204 else {
                let fault =
                    (try? APIJSON.decode(FaultModel.self, from: response.body ?? []))?.faultMessage ?? "status \(response.status)"
                throw LoadError(description: "config file \(file): \(what): \(fault)")
            }
        }
    }

    private static func read(_ path: String) throws(LoadError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LoadError(description: "config file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw LoadError(description: "config file \(path): \(String(cString: strerror(errno)))") }
            if count == 0 { return bytes }
            bytes += chunk[..<count]
            if bytes.count > 1 << 20 { throw LoadError(description: "config file \(path): larger than 1 MiB") }
        }
    }
}
