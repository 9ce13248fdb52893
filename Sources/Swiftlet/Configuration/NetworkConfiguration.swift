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

    /// An interface on the tap `tap`; by default with the MAC generated from the tap name and
    /// offloads on, as `--net tap=NAME` gives.
    public init(tap: String, mac: MACAddress? = nil, offloads: Bool = true) {
        self.tap = tap
        self.mac = mac
        self.offloads = offloads
    }

    /// The address the guest gets.
    public var effectiveMAC: MACAddress { mac ?? MACAddress.generated(from: tap) }

    /// Parses the CLI's `--net` value: `tap=NAME[,mac=MAC][,offload=off]`. A value without `=`
    /// is taken as the tap name.
    public static func parse(_ text: String) throws(NetworkOptionError) -> NetworkConfiguration {
        var tap: String?
        var network = NetworkConfiguration(tap: "")
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let equals = item.firstIndex(of: "=") else {
                guard tap == nil, !item.isEmpty else { throw .malformed(String(item)) }
                tap = String(item)
                continue
            }
            let key = String(item[..<equals])
            let value = String(item[item.index(after: equals)...])
            switch key {
            case "tap", "ifname":
                guard tap == nil else { throw .duplicate(key) }
                tap = value
            case "mac":
                guard network.mac == nil else { throw .duplicate(key) }
                guard let mac = MACAddress(parsing: value) else { throw .badMAC(value) }
                guard !mac.isMulticast, mac.rawValue != 0 else { throw .notUnicast(value) }
                network.mac = mac
            case "offload", "offloads":
                switch value {
                case "on", "true", "yes", "1": network.offloads = true
                case "off", "false", "no", "0": network.offloads = false
                default: throw .badFlag(key: key, value: value)
                }
            default: throw .unknownKey(key)
            }
        }
        guard let tap, !tap.isEmpty else { throw .missingTap }
        guard TapDevice.isValidInterfaceName(tap) else { throw .badTapName(tap) }
        network.tap = tap
        return network
    }
}

/// A `--net` value that cannot be read.
public enum NetworkOptionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No tap name: neither `tap=NAME` nor a bare name was given, or it was empty.
    case missingTap
    /// An empty item, or a second item without `=` (only the tap name may be given bare).
    case malformed(String)
    /// The tap name (`tap`/`ifname`, or bare) or `mac` was given twice; the key as written.
    case duplicate(String)
    /// A key other than `tap` (`ifname`), `mac` and `offload` (`offloads`).
    case unknownKey(String)
    /// A `mac` value that is not six hex octets separated by `:` or `-`.
    case badMAC(String)
    /// A `mac` value that is a group (multicast or broadcast) address or all zeros.
    case notUnicast(String)
    /// A tap name Linux refuses (`TapDevice.isValidInterfaceName`).
    case badTapName(String)
    /// An `offload` value other than `on`/`off` (or `true`/`false`, `yes`/`no`, `1`/`0`).
    case badFlag(key: String, value: String)

    /// A one-line explanation of the item, with the form it should take.
    public var description: String {
        switch self {
        case .missingTap: "no tap interface given (tap=NAME)"
        case .malformed(let item): "cannot read '\(item)': use key=value"
        case .duplicate(let key): "'\(key)' given twice"
        case .unknownKey(let key): "unknown option '\(key)'; use tap, mac or offload"
        case .badMAC(let text): "mac=\(text): use six hex octets, e.g. 02:00:00:00:00:01"
        case .notUnicast(let text): "mac=\(text) is a multicast or zero address; the guest needs a unicast one"
        case .badTapName(let name): "'\(name)' is not an interface name (1-15 bytes, no '/', ':' or spaces)"
        case .badFlag(let key, let value): "\(key)=\(value): use on or off"
        }
    }
}
