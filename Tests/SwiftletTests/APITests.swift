import Glibc
import Swiftlet
import SwiftletAPI
import Synchronization
import Testing

/// A guest that is never built: records what the controller asked of it.
final class FakeMicroVM: MicroVM, @unchecked Sendable {
    let calls = Mutex<[String]>([])
    func pause() { calls.withLock { $0.append("pause") } }
    func resume() { calls.withLock { $0.append("resume") } }
    func snapshot(to directory: String) throws {
        calls.withLock { $0.append("snapshot") }
        for name in ["state", "memory"] {
            let fd = open(directory + "/" + name, O_CREAT | O_WRONLY, 0o644)
            close(fd)
        }
    }
}

/// Boots fakes and remembers the configuration it was given.
final class FakeFactory: MicroVMFactory, @unchecked Sendable {
    let booted = Mutex<MachineConfiguration?>(nil)
    let vm = FakeMicroVM()
    func boot(_ configuration: MachineConfiguration) throws -> any MicroVM {
        booted.withLock { $0 = configuration }
        return vm
    }
    func restore(directory: String, resume: Bool) throws -> any MicroVM { vm }
}

/// The VMM state machine and the request models, without KVM: status codes, fault messages,
/// pre-boot and post-boot rules, and the configuration InstanceStart builds.
@Suite("API controller")
struct APIControllerTests {
    let factory = FakeFactory()
    let controller: VMMController
    let kernel: TemporaryFile

    init() throws {
        controller = VMMController(instanceID: "test-vm", factory: factory)
        kernel = try TemporaryFile(contents: [0x7F, 0x45, 0x4C, 0x46])
    }

    func put(_ path: String, _ body: String) -> APIResponse {
        controller.handle(method: "PUT", path: path, body: Array(body.utf8))
    }
    func fault(_ response: APIResponse) -> String {
        (try? APIJSONForTests.fault(response.body ?? [])) ?? "<no fault_message>"
    }

    @Test("the go-sdk call order boots, with the root drive first, rate limiters mapped and the root on the command line")
    func bootOrder() throws {
        let disk = try TemporaryFile(contents: [UInt8](repeating: 0, count: 4096))
        let data = try TemporaryFile(contents: [UInt8](repeating: 0, count: 4096))
        #expect(put("/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#).status == 204)
        #expect(put("/boot-source", #"{"kernel_image_path": "\#(kernel.path)", "boot_args": "console=ttyS0"}"#).status == 204)
        #expect(
            put("/drives/data", #"{"drive_id": "data", "path_on_host": "\#(data.path)", "is_root_device": false}"#).status == 204)
        let root =
            #"{"drive_id": "rootfs", "path_on_host": "\#(disk.path)", "is_root_device": true, "is_read_only": true, "#
            + #""rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000, "one_time_burst": 0}, "ops": {"size": 0, "refill_time": 100}}}"#
        #expect(put("/drives/rootfs", root).status == 204)
        #expect(
            put(
                "/network-interfaces/eth0",
                #"{"iface_id": "eth0", "host_dev_name": "tap7", "guest_mac": "02:00:00:00:00:07", "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#
            )
            .status == 204)
        #expect(controller.vmState == .notStarted)
        #expect(put("/actions", #"{"action_type": "InstanceStart"}"#).status == 204)
        #expect(controller.vmState == .running)
        let configuration = try #require(factory.booted.withLock { $0 })
        #expect(configuration.vcpuCount == 2)
        #expect(configuration.memorySize == 256 << 20)
        #expect(configuration.kernelPath == kernel.path)
        #expect(configuration.commandLine == "console=ttyS0 root=/dev/vda ro")
        #expect(configuration.disks.map(\.path) == [disk.path, data.path])
        #expect(configuration.disks[0].readOnly)
        #expect(
            configuration.disks[0].rateLimit
                == RateLimit(bandwidth: TokenBucketLimit(size: 1 << 20, refillTimeMilliseconds: 1000)))
        #expect(configuration.networks.first?.tap == "tap7")
        #expect(configuration.networks.first?.mac == MACAddress(parsing: "02:00:00:00:00:07"))
        #expect(configuration.networks.first?.transmitRateLimit?.operations?.size == 10)
        // Post-boot: pre-boot resources are refused, pause and resume reach the guest.
        #expect(put("/boot-source", #"{"kernel_image_path": "\#(kernel.path)"}"#).status == 400)
        #expect(fault(put("/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#)).contains("after starting"))
        #expect(put("/actions", #"{"action_type": "InstanceStart"}"#).status == 400)
        #expect(controller.handle(method: "PATCH", path: "/vm", body: Array(#"{"state": "Paused"}"#.utf8)).status == 204)
        #expect(controller.vmState == .paused)
        let directory = try TemporaryDirectoryForAPI()
        #expect(
            put(
                "/snapshot/create",
                #"{"snapshot_path": "\#(directory.path)/vm.state", "mem_file_path": "\#(directory.path)/vm.mem"}"#
            )
            .status == 204)
        #expect(access(directory.path + "/vm.state", F_OK) == 0 && access(directory.path + "/vm.mem", F_OK) == 0)
        #expect(controller.handle(method: "PATCH", path: "/vm", body: Array(#"{"state": "Resumed"}"#.utf8)).status == 204)
        #expect(factory.vm.calls.withLock { $0 } == ["pause", "snapshot", "resume"])
        let info = String(decoding: controller.handle(method: "GET", path: "/", body: []).body ?? [], as: UTF8.self)
        #expect(info.contains(#""state":"Running""#) && info.contains(#""id":"test-vm""#))
    }

    @Test("bad requests get 400 with a fault_message, unknown paths 404, wrong methods 405")
    func statusCodes() {
        #expect(
            fault(put("/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#)).contains(
                "unknown field `bogus`"))
        #expect(fault(put("/machine-config", "{not json")).contains("not valid JSON"))
        #expect(put("/machine-config", #"{"vcpu_count": -1, "mem_size_mib": 128}"#).status == 400)
        #expect(put("/machine-config", #"{"vcpu_count": 1.5, "mem_size_mib": 128}"#).status == 400)
        #expect(fault(put("/machine-config", #"{"mem_size_mib": 128}"#)).contains("vcpu_count"))
        #expect(put("/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#).status == 400)
        #expect(put("/machine-config", "").status == 400)
        #expect(put("/drives/a", #"{"drive_id": "b", "path_on_host": "/etc/hostname", "is_root_device": false}"#).status == 400)
        #expect(
            fault(put("/drives/a", #"{"drive_id": "a", "path_on_host": "/nonexistent", "is_root_device": false}"#)).contains(
                "No such file"))
        #expect(
            put(
                "/drives/a",
                #"{"drive_id": "a", "path_on_host": "/etc/hostname", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 1}}}"#
            )
            .status == 400)
        #expect(fault(put("/boot-source", #"{"kernel_image_path": "/nonexistent"}"#)).contains("kernel file cannot be opened"))
        #expect(fault(put("/vsock", #"{"guest_cid": 2, "uds_path": "/tmp/v.sock"}"#)).contains("cid 2 is reserved"))
        #expect(fault(put("/vsock", #"{"guest_cid": 3, "uds_path": ""}"#)).contains("socket path is empty"))
        #expect(fault(put("/actions", #"{"action_type": "InstanceStart"}"#)).contains("without kernel"))
        #expect(put("/actions", #"{"action_type": "Reboot"}"#).status == 400)
        #expect(put("/actions", #"{"action_type": "SendCtrlAltDel"}"#).status == 400)
        #expect(controller.handle(method: "PATCH", path: "/vm", body: Array(#"{"state": "Paused"}"#.utf8)).status == 400)
        #expect(put("/balloon", #"{"amount_mib": 1, "deflate_on_oom": false}"#).status == 400)
        #expect(put("/nothing/here", "{}").status == 404)
        #expect(controller.handle(method: "GET", path: "/drives/x/y", body: []).status == 404)
        let wrong = controller.handle(method: "GET", path: "/actions", body: [])
        #expect(wrong.status == 405 && wrong.allowedMethods == ["PUT"])
        #expect(controller.handle(method: "DELETE", path: "/machine-config", body: []).status == 405)
        #expect(controller.vmState == .notStarted)
    }

    @Test("snapshot load is refused after pre-boot configuration, and a loaded guest starts paused")
    func snapshotLoad() throws {
        let state = try TemporaryFile(contents: [1])
        let memory = try TemporaryFile(contents: [2])
        let load =
            #"{"snapshot_path": "\#(state.path)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memory.path)"}}"#
        let other = VMMController(instanceID: "x", factory: FakeFactory())
        #expect(
            other.handle(method: "PUT", path: "/machine-config", body: Array(#"{"vcpu_count": 1, "mem_size_mib": 64}"#.utf8))
                .status == 204)
        #expect(other.handle(method: "PUT", path: "/snapshot/load", body: Array(load.utf8)).status == 400)
        #expect(put("/snapshot/load", load).status == 204)
        #expect(controller.vmState == .paused)
    }

    @Test("a config file with unknown or unsupported keys is refused, naming them")
    func configFile() throws {
        let file = try TemporaryFile(contents: Array(#"{"boot-source": {"kernel_image_path": "/x"}, "extra": 1}"#.utf8))
        #expect(throws: ConfigFile.LoadError.self) { try ConfigFile.boot(file.path, controller: controller) }
        let balloon = try TemporaryFile(contents: Array(#"{"balloon": {"amount_mib": 1}}"#.utf8))
        do {
            try ConfigFile.boot(balloon.path, controller: controller)
            Issue.record("a balloon was accepted")
        } catch {
            #expect(error.description.contains("balloon is not supported"))
        }
    }
}

enum APIJSONForTests {
    struct Fault: Decodable { let fault_message: String }
    static func fault(_ bytes: [UInt8]) throws -> String {
        // The fault text, read with a tiny scanner (no Foundation in the tests).
        let text = String(decoding: bytes, as: UTF8.self)
        guard let start = text.range(of: #"{"fault_message":""#), text.hasSuffix("\"}") else {
            throw TestFailure("no fault: \(text)")
        }
        return String(text[start.upperBound..<text.index(text.endIndex, offsetBy: -2)]).replacingOccurrences(of: "\\/", with: "/")
    }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

/// A directory in /tmp, removed (with its files) when the value goes away.
final class TemporaryDirectoryForAPI {
    let path: String
    init() throws {
        var template = Array("/tmp/swiftlet-api-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TestFailure("mkdtemp failed")
        }
        path = String(cString: made)
    }
    deinit {
        if let directory = opendir(path) {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) {
                    String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
                }
                if name != "." && name != ".." { unlink(path + "/" + name) }
            }
            closedir(directory)
        }
        rmdir(path)
    }
}
