import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// One virtio-net interface of a machine, as a plain value (`MachineConfiguration.networks`).
public struct NetworkConfiguration: Equatable, Sendable {
    /// The host tap interface (opened, or created, in the VMM's network namespace).
    public var tap: String
    /// The guest's MAC address; nil means `MACAddress.generated(from: tap)`.
    public var mac: MACAddress?
    /// Offer checksum and segmentation offloads where the tap supports them (the default).
    /// Off, the guest sends and receives only complete, checksummed frames of at most its MTU.
    public var offloads: Bool
    /// Limits on frames delivered to the guest (bytes and frames, token buckets); nil: none.
    public var receiveRateLimit: RateLimit?
    /// Limits on frames the guest sends; nil: none.
    public var transmitRateLimit: RateLimit?

    /// An interface on the tap `tap`; by default with the MAC generated from the tap name and
    /// offloads on, as `--net tap=NAME` gives (the CLI reads `--net` itself). Nothing is checked
    /// until `validate()`.
    public init(
        tap: String, mac: MACAddress? = nil, offloads: Bool = true, receiveRateLimit: RateLimit? = nil,
        transmitRateLimit: RateLimit? = nil
    ) {
        self.tap = tap
        self.mac = mac
        self.offloads = offloads
        self.receiveRateLimit = receiveRateLimit
        self.transmitRateLimit = transmitRateLimit
    }

    /// The address the guest gets.
    public var effectiveMAC: MACAddress { mac ?? MACAddress.generated(from: tap) }

    /// Checks what can be checked without opening the tap: the name is one Linux accepts, a
    /// configured MAC is unicast and not all zeros, and the rate limits' buckets are usable.
    /// `MachineConfiguration.validate()` calls it for every interface (and checks that no two
    /// share an address).
    public func validate() throws(ConfigurationError) {
        guard TapDevice.isValidInterfaceName(tap) else { throw .badTapName(tap) }
        if let mac, mac.isMulticast || mac.rawValue == 0 { throw .macNotUnicast(mac) }
        let buckets = [
            ("rx-bw", receiveRateLimit?.bandwidth), ("rx-ops", receiveRateLimit?.operations),
            ("tx-bw", transmitRateLimit?.bandwidth), ("tx-ops", transmitRateLimit?.operations),
        ]
        for case (let name, let bucket?) in buckets {
            if let problem = bucket.problem { throw .badNetworkRateLimit(tap: tap, bucket: name, reason: problem) }
        }
    }
}
