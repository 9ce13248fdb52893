/// An Ethernet MAC address, as a plain value (the low 48 bits of `rawValue`, first octet
/// most significant).
public struct MACAddress: Hashable, Codable, Sendable, CustomStringConvertible {
    /// The address in the low 48 bits, first octet in bits 47-40; the high 16 bits are always zero.
    public let rawValue: UInt64

    /// The address in the low 48 bits of `rawValue`; the high 16 bits are dropped.
    public init(rawValue: UInt64) { self.rawValue = rawValue & 0xFFFF_FFFF_FFFF }

    /// The address with these octets in transmission order; traps unless there are exactly six.
    public init(_ octets: [UInt8]) {
        precondition(octets.count == 6, "a MAC address has 6 octets")
        self.init(rawValue: octets.reduce(0) { $0 << 8 | UInt64($1) })
    }

    /// The six octets in transmission order.
    public var octets: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: rawValue >> (40 - 8 * UInt64($0))) } }

    /// A group (multicast or broadcast) address: bit 0 of the first octet.
    public var isMulticast: Bool { rawValue >> 40 & 1 != 0 }
    /// A locally administered address: bit 1 of the first octet.
    public var isLocallyAdministered: Bool { rawValue >> 40 & 2 != 0 }

    /// `aa:bb:cc:dd:ee:ff` (or with `-`); nil for anything else.
    public init?(parsing text: String) {
        let parts = text.split(separator: text.contains("-") ? "-" : ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var octets: [UInt8] = []
        for part in parts {
            guard part.count == 2, let octet = UInt8(part, radix: 16) else { return nil }
            octets.append(octet)
        }
        self.init(octets)
    }

    /// A unicast, locally administered address (`02:xx:xx:xx:xx:xx`) derived from `seed` (the
    /// tap's name): the same VM configuration gets the same address every time it starts.
    public static func generated(from seed: String) -> MACAddress {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a, 64 bits
        for byte in "swiftlet-mac:\(seed)".utf8 { hash = (hash ^ UInt64(byte)) &* 0x0100_0000_01B3 }
        return MACAddress(rawValue: 0x02 << 40 | hash & 0xFF_FFFF_FFFF)
    }

    /// The octets in lowercase hex separated by colons, e.g. `02:00:00:00:00:01`.
    public var description: String {
        octets.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }
}

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
    /// offloads on, as `--net tap=NAME` gives (the CLI reads `--net` itself). Nothing is checked
    /// until `validate()`.
    public init(tap: String, mac: MACAddress? = nil, offloads: Bool = true) {
        self.tap = tap
        self.mac = mac
        self.offloads = offloads
    }

    /// The address the guest gets.
    public var effectiveMAC: MACAddress { mac ?? MACAddress.generated(from: tap) }

    /// Checks what can be checked without opening the tap: the name is one Linux accepts, and a
    /// configured MAC is unicast and not all zeros. `MachineConfiguration.validate()` calls it for
    /// every interface (and checks that no two share an address).
    public func validate() throws(ConfigurationError) {
        guard Self.isValidInterfaceName(tap) else { throw .badTapName(tap) }
        if let mac, mac.isMulticast || mac.rawValue == 0 { throw .macNotUnicast(mac) }
    }

    /// What Linux accepts as an interface name: 1-15 bytes, not `.` or `..`, no `/`, `:`,
    /// white space or NUL.
    public static func isValidInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...15).contains(bytes.count), name != ".", name != ".." else { return false }
        return !bytes.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }
    }
}
