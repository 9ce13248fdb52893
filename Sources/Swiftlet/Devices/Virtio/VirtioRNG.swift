import CKVM
import Glibc

/// A virtio entropy device (virtio-rng, virtio 1.2, 5.4) backed by the host's getrandom(2).
///
/// One queue (`requestq`); no feature bits of its own, no configuration space. Each chain's
/// device-writable buffers are filled with random bytes, at most `maximumRequestBytes` per
/// chain (the used length says how many), straight into guest memory.
public struct VirtioRNG: VirtioDevice {
    /// The most bytes one request gets, so a guest cannot keep the event loop busy with one
    /// huge buffer (Linux asks for at most a page at a time).
    public static let maximumRequestBytes = 64 << 10

    /// Requests served.
    public struct Statistics: Equatable, Codable, Sendable {
        public var requests = 0
        public var bytes: UInt64 = 0
        /// getrandom(2) failures (the request got fewer bytes, possibly none).
        public var failures = 0
    }

    public let queueSizeMaximum: UInt16
    public private(set) var statistics = Statistics()

    public init(queueSizeMaximum: UInt16 = 64) {
        self.queueSizeMaximum = queueSizeMaximum
    }

    public var deviceType: UInt32 { VirtioDeviceType.entropy }
    public var queueCount: Int { 1 }
    public var maximumQueueSize: UInt16 { queueSizeMaximum }
    public var offeredFeatures: UInt64 {
        VirtioFeature.version1 | VirtioFeature.ringIndirectDescriptors | VirtioFeature.ringEventIndex
    }
    public var configurationSpace: [UInt8] { [] }

    public mutating func activate(features: UInt64) {}
    public mutating func reset() {}

    public mutating func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) -> VirtioChainResult {
        let wanted = Int(min(chain.writableLength, UInt64(Self.maximumRequestBytes)))
        var failed = false
        var filled = 0
        _ = chain.forEachPiece(writable: true, offset: 0, count: wanted, memory: memory) { pointer, _, count in
            guard !failed else { return }
            var done = 0
            while done < count {
                let got = getrandom(pointer + done, count - done, 0)
                if got > 0 {
                    done += got
                } else if got < 0 && Glibc.errno == EINTR {
                    continue
                } else {
                    failed = true
                    break
                }
            }
            filled += done
        }
        statistics.requests += 1
        statistics.bytes += UInt64(filled)
        if failed { statistics.failures += 1 }
        return .used(UInt32(filled))
    }
}
