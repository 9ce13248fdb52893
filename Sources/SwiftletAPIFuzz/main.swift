import NIOEmbedded
import SwiftletAPI
