import CHost
import SwiftletHost
import SwiftletMemory

extension VirtioMMIOTransport where Device == VirtioNet {
    /// Changes the link status in the configuration space (VIRTIO_NET_S_LINK_UP) and tells the
    /// driver with a configuration-change interrupt.
    public func setLinkUp(_ up: Bool) {
        let configuration = updateDevice { device -> [UInt8] in
            device.setLinkUp(up)
            return device.configurationSpace
        }
        updateConfiguration(configuration)
    }

    /// Frames moved and dropped so far.
    public var networkStatistics: VirtioNet.Statistics { withDevice { $0.statistics } }
}
