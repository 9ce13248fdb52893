import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletCommandLine
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// A grammar with a byte-size key and no bare value, standing in for later device options.
private let sizedGrammar = KeyValueGrammar(
    option: "--test",
    keys: [
        OptionKey("size", .byteSize, placeholder: "SIZE", required: true),
        OptionKey("name", .text, placeholder: "NAME"),
        OptionKey("shared", .toggle, placeholder: "on"),
    ])

/// Values that follow their grammar, and what each reads as.
private let goodDisks: [(String, DiskConfiguration)] = [
    ("path=/img", DiskConfiguration(path: "/img")),
    ("/img", DiskConfiguration(path: "/img")),
    ("path=/a b,readonly=on", DiskConfiguration(path: "/a b", readOnly: true)),
    ("readonly=off,path=/img,id=root,direct=on", DiskConfiguration(path: "/img", id: "root", directIO: true)),
    ("readonly=on,/img", DiskConfiguration(path: "/img", readOnly: true)),
    ("file=/img,ro=on,serial=s", DiskConfiguration(path: "/img", readOnly: true, id: "s")),
    ("path=/img,id=a=b", DiskConfiguration(path: "/img", id: "a=b")),
    // The grammar reads any id; its length is the configuration's to check (validation below).
    ("path=/img,id=123456789012345678901", DiskConfiguration(path: "/img", id: "123456789012345678901")),
    // Rate limits: SIZE/MS[/BURST] in bytes for bw, counts for ops.
    (
        "/img,bw=4M/1000",
        DiskConfiguration(
            path: "/img", rateLimit: RateLimit(bandwidth: TokenBucketLimit(size: 4 << 20, refillTimeMilliseconds: 1000)))
    ),
    (
        "/img,ops=100/1000/500,bw=512K/125/16M",
        DiskConfiguration(
            path: "/img",
            rateLimit: RateLimit(
                bandwidth: TokenBucketLimit(size: 512 << 10, refillTimeMilliseconds: 125, oneTimeBurst: 16 << 20),
                operations: TokenBucketLimit(size: 100, refillTimeMilliseconds: 1000, oneTimeBurst: 500)))
    ),
    // Zero values are read; validation refuses them (below).
    (
        "/img,ops=0/10",
        DiskConfiguration(path: "/img", rateLimit: RateLimit(operations: TokenBucketLimit(size: 0, refillTimeMilliseconds: 10)))
    ),
]

private let goodNetworks: [(String, NetworkConfiguration)] = [
    ("tap=tap0", NetworkConfiguration(tap: "tap0")),
    ("tap0", NetworkConfiguration(tap: "tap0")),
    ("tap=vm-net.1,mac=02:00:00:00:00:01", NetworkConfiguration(tap: "vm-net.1", mac: MACAddress([2, 0, 0, 0, 0, 1]))),
    (
        "mac=02-00-00-00-00-02,tap=t,offload=off",
        NetworkConfiguration(tap: "t", mac: MACAddress([2, 0, 0, 0, 0, 2]), offloads: false)
    ),
    ("ifname=t,offloads=on", NetworkConfiguration(tap: "t")),
    ("tap=a/b", NetworkConfiguration(tap: "a/b")),
    (
        "tap=t,rx-bw=1M/100,tx-ops=1000/1000/100",
        NetworkConfiguration(
            tap: "t", receiveRateLimit: RateLimit(bandwidth: TokenBucketLimit(size: 1 << 20, refillTimeMilliseconds: 100)),
            transmitRateLimit: RateLimit(
                operations: TokenBucketLimit(size: 1000, refillTimeMilliseconds: 1000, oneTimeBurst: 100)))
    ),
    (
        "tap=t,rx-ops=10/10,tx-bw=64K/10,rx-bw=2M/20,tx-ops=5/5",
        NetworkConfiguration(
            tap: "t",
            receiveRateLimit: RateLimit(
                bandwidth: TokenBucketLimit(size: 2 << 20, refillTimeMilliseconds: 20),
                operations: TokenBucketLimit(size: 10, refillTimeMilliseconds: 10)),
            transmitRateLimit: RateLimit(
                bandwidth: TokenBucketLimit(size: 64 << 10, refillTimeMilliseconds: 10),
                operations: TokenBucketLimit(size: 5, refillTimeMilliseconds: 5)))
    ),
]

/// Values that do not follow their grammar, with the exact error.
private let badValues: [(KeyValueGrammar, String, String)] = [
    (DeviceOptions.disk, "", "--disk '': an empty item; write key=value items separated by single commas"),
    (
        DeviceOptions.disk, "path=/a,,readonly=on",
        "--disk 'path=/a,,readonly=on': an empty item; write key=value items separated by single commas"
    ),
    (DeviceOptions.disk, "path=/a,", "--disk 'path=/a,': an empty item; write key=value items separated by single commas"),
    (DeviceOptions.disk, "readonly=on", "--disk 'readonly=on': missing key 'path' (path=FILE)"),
    (DeviceOptions.disk, "path=", "--disk 'path=': key 'path' has no value"),
    (DeviceOptions.disk, "path=/a,id=", "--disk 'path=/a,id=': key 'id' has no value"),
    (DeviceOptions.disk, "path=/a,path=/b", "--disk 'path=/a,path=/b': key 'path' given twice"),
    (DeviceOptions.disk, "path=/a,file=/b", "--disk 'path=/a,file=/b': key 'file' given twice"),
    (DeviceOptions.disk, "/a,path=/b", "--disk '/a,path=/b': key 'path' given twice"),
    (DeviceOptions.disk, "/a,/b", "--disk '/a,/b': '/b' is not key=value"),
    (
        DeviceOptions.disk, "path=/a,cache=none",
        "--disk 'path=/a,cache=none': unknown key 'cache'; use path, readonly, id, direct, bw or ops"
    ),
    (DeviceOptions.disk, "path=/a,readonly=maybe", "--disk 'path=/a,readonly=maybe': key 'readonly' is 'maybe'; use on or off"),
    (DeviceOptions.disk, "path=/a,ro=yes", "--disk 'path=/a,ro=yes': key 'ro' is 'yes'; use on or off"),
    (DeviceOptions.disk, "path=/a,direct=1", "--disk 'path=/a,direct=1': key 'direct' is '1'; use on or off"),
    (DeviceOptions.disk, "path=/a,direct=ON", "--disk 'path=/a,direct=ON': key 'direct' is 'ON'; use on or off"),
    (DeviceOptions.network, "mac=02:00:00:00:00:01", "--net 'mac=02:00:00:00:00:01': missing key 'tap' (tap=NAME)"),
    (DeviceOptions.network, "tap=a,tap=b", "--net 'tap=a,tap=b': key 'tap' given twice"),
    (DeviceOptions.network, "a,b", "--net 'a,b': 'b' is not key=value"),
    (
        DeviceOptions.network, "tap=a,speed=10G",
        "--net 'tap=a,speed=10G': unknown key 'speed'; use tap, mac, offload, rx-bw, rx-ops, tx-bw or tx-ops"
    ),
    (
        DeviceOptions.network, "tap=a,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02",
        "--net 'tap=a,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02': key 'mac' given twice"
    ),
    (DeviceOptions.network, "tap=a,offload=false", "--net 'tap=a,offload=false': key 'offload' is 'false'; use on or off"),
    (
        DeviceOptions.network, "tap=a,mac=02:00:00:00:00",
        "--net 'tap=a,mac=02:00:00:00:00': key 'mac' is '02:00:00:00:00'; use six hex octets, e.g. 02:00:00:00:00:01"
    ),
    (
        DeviceOptions.disk, "/a,bw=4M",
        "--disk '/a,bw=4M': key 'bw' is '4M'; use SIZE/REFILL_MS[/BURST], e.g. 4M/1000 (4 MiB per second)"
    ),
    (
        DeviceOptions.disk, "/a,bw=4M/1s",
        "--disk '/a,bw=4M/1s': key 'bw' is '4M/1s'; use SIZE/REFILL_MS[/BURST], e.g. 4M/1000 (4 MiB per second)"
    ),
    (
        DeviceOptions.disk, "/a,bw=4M/1000/1M/2",
        "--disk '/a,bw=4M/1000/1M/2': key 'bw' is '4M/1000/1M/2'; use SIZE/REFILL_MS[/BURST], e.g. 4M/1000 (4 MiB per second)"
    ),
    (
        DeviceOptions.disk, "/a,bw=/1000",
        "--disk '/a,bw=/1000': key 'bw' is '/1000'; use SIZE/REFILL_MS[/BURST], e.g. 4M/1000 (4 MiB per second)"
    ),
    (
        DeviceOptions.disk, "/a,ops=1K/1000",
        "--disk '/a,ops=1K/1000': key 'ops' is '1K/1000'; use COUNT/REFILL_MS[/BURST], e.g. 100/1000 (100 per second)"
    ),
    (
        DeviceOptions.disk, "/a,ops=-1/1000",
        "--disk '/a,ops=-1/1000': key 'ops' is '-1/1000'; use COUNT/REFILL_MS[/BURST], e.g. 100/1000 (100 per second)"
    ),
    (
        DeviceOptions.disk, "/a,ops=1/99999999999999999999",
        "--disk '/a,ops=1/99999999999999999999': key 'ops' is '1/99999999999999999999'; use COUNT/REFILL_MS[/BURST], e.g. 100/1000 (100 per second)"
    ),
    (DeviceOptions.disk, "/a,ops=1/1,ops=2/2", "--disk '/a,ops=1/1,ops=2/2': key 'ops' given twice"),
    (
        DeviceOptions.network, "tap=a,rx-bw=1M/x",
        "--net 'tap=a,rx-bw=1M/x': key 'rx-bw' is '1M/x'; use SIZE/REFILL_MS[/BURST], e.g. 4M/1000 (4 MiB per second)"
    ),
    (
        DeviceOptions.network, "tap=a,bw=1M/10",
        "--net 'tap=a,bw=1M/10': unknown key 'bw'; use tap, mac, offload, rx-bw, rx-ops, tx-bw or tx-ops"
    ),
    (sizedGrammar, "size=12Q", "--test 'size=12Q': key 'size' is '12Q'; use a size such as 512K, 128M or 1G"),
    (sizedGrammar, "size=1.5G", "--test 'size=1.5G': key 'size' is '1.5G'; use a size such as 512K, 128M or 1G"),
    (
        sizedGrammar, "size=17179869184G",
        "--test 'size=17179869184G': key 'size' is '17179869184G'; use a size such as 512K, 128M or 1G"
    ),
    (sizedGrammar, "4096", "--test '4096': '4096' is not key=value"),
    (sizedGrammar, "name=x", "--test 'name=x': missing key 'size' (size=SIZE)"),
    (sizedGrammar, "size=1M,shared=of", "--test 'size=1M,shared=of': key 'shared' is 'of'; use on or off"),
    (sizedGrammar, "size=1M,Size=2M", "--test 'size=1M,Size=2M': unknown key 'Size'; use size, name or shared"),
]

/// `swiftlet boot` command lines (after `--kernel /k`) that are usage errors, with the message.
private let badBootLines: [([String], String)] = [
    (["--cpus", "abc"], "--cpus 'abc': not a whole number"),
    (["--cpus", "0"], "--cpus: 0 vCPUs requested; between 1 and 254 are supported"),
    (["--cpus", "255"], "--cpus: 255 vCPUs requested; between 1 and 254 are supported"),
    (["--memory", "0"], "--memory: guest memory of 0 bytes is too small (at least 2 MiB)"),
    (["--memory", "1025G"], "--memory: guest memory of 1100585369600 bytes is too large (at most 1024 GiB)"),
    (["--memory", "12Q"], "--memory '12Q': not a size; use a size such as 128M or 1G (binary units)"),
    (["--memory", "4097K"], "--memory: guest memory of 4195328 bytes is not a multiple of 4 KiB"),
    (["--timeout", "soon"], "--timeout 'soon': not a positive number of seconds"),
    (["--timeout", "0"], "--timeout '0': not a positive number of seconds"),
    (["--format", "pe"], "--format 'pe': unknown format; use one of: auto, elf, bzimage, flat-real-mode"),
    (["--kernel", ""], "--kernel: no kernel image given"),
    (
        ["--disk", "path=/d,colour=red"],
        "--disk 'path=/d,colour=red': unknown key 'colour'; use path, readonly, id, direct, bw or ops"
    ),
    (["--disk", "/d,id=123456789012345678901"], "--disk: disk id '123456789012345678901' is longer than 20 bytes"),
    (["--disk", "/d,bw=0/1000"], "--disk: disk /d: bw: the bucket size must be at least 1"),
    (["--disk", "/d,ops=10/0"], "--disk: disk /d: ops: the refill time must be at least 1 ms"),
    (
        ["--disk", "/d,ops=10/9223372036855"],
        "--disk: disk /d: ops: the refill time must be at most 9223372036854 ms"
    ),
    (["--net", "tap=t,tx-ops=0/10"], "--net: tap t: tx-ops: the bucket size must be at least 1"),
    (["--net", "tap=t,rx-bw=1M/0"], "--net: tap t: rx-bw: the refill time must be at least 1 ms"),
    (["--uid", "5"], "--uid: needs --gid as well"),
    (["--gid", "5"], "--gid: needs --uid as well"),
    (["--chroot", "/srv/vm"], "--chroot: needs --uid and --gid (the user to run as)"),
    (["--uid", "no-such-user-here", "--gid", "1"], "--uid 'no-such-user-here': no such user"),
    (["--uid", "1", "--gid", "no-such-group-here"], "--gid 'no-such-group-here': no such group"),
    (["--uid", "4294967295", "--gid", "1"], "--uid '4294967295': not a user id (0-4294967294) or name"),
    (["--uid", "1", "--gid", "99999999999"], "--gid '99999999999': not a group id (0-4294967294) or name"),
    (["--uid", "1", "--gid", "1", "--chroot", "relative/dir"], "--chroot 'relative/dir': not an absolute path"),
    (["--net", "tap=a/b"], "--net: 'a/b' is not an interface name (1-15 bytes, no '/', ':' or spaces)"),
    (["--net", "tap=t,mac=01:00:00:00:00:01"], "--net: MAC address 01:00:00:00:00:01 is a multicast or zero address"),
    (
        ["--net", "t0", "--net", "tap=t0"],
        "--net: two network interfaces have the MAC address \(MACAddress.generated(from: "t0"))"
    ),
    (
        Array(repeating: ["--disk", "/d"], count: 19).flatMap { $0 } + ["--rng"],
        "--disk, --net, --rng and --vsock: 20 virtio devices (disks, network interfaces, rng, vsock) requested; at most 19 are supported"
    ),
    (["--rng=on"], "'--rng' takes no value"),
    (["--boot-timer=off"], "'--boot-timer' takes no value"),
    (["--bogus"], "unknown option '--bogus'"),
    (["stray"], "unexpected argument 'stray'"),
    (["--cmdline"], "missing value for '--cmdline'"),
]

@Suite("Command line: the key=value grammar, option declarations, parsing and help")
struct CommandLineTests {
    // MARK: the key=value grammar

    @Test("--disk values read as disks", arguments: goodDisks)
    func disks(text: String, expected: DiskConfiguration) throws {
        #expect(try DeviceOptions.diskConfiguration(text) == expected)
    }

    @Test("--net values read as network interfaces", arguments: goodNetworks)
    func networks(text: String, expected: NetworkConfiguration) throws {
        #expect(try DeviceOptions.networkConfiguration(text) == expected)
    }

    @Test("byte-size, text and toggle keys read as their values")
    func kinds() throws {
        let values = try sizedGrammar.parse("name=x,size=128M,shared=on")
        #expect(values.byteSize("size") == 128 << 20)
        #expect(values.text("name") == "x")
        #expect(values.toggle("shared") == true)
        let minimal = try sizedGrammar.parse("size=4096")
        #expect(minimal.byteSize("size") == 4096)
        #expect(minimal.text("name") == nil && minimal.toggle("shared") == nil)
        #expect(try sizedGrammar.parse("size=1G,shared=off").toggle("shared") == false)
    }

    @Test("a value that breaks the grammar is an error naming the option, the value and the key", arguments: badValues)
    func grammarErrors(grammar: KeyValueGrammar, text: String, expected: String) {
        do {
            try Self.read(text, with: grammar)
            Issue.record("'\(text)' was read")
        } catch {
            #expect(error.option == grammar.option && error.text == text)
            #expect(error.description == expected)
        }
    }

    /// Reads `text` as its device option does (the MAC is read by `--net` itself), or with the grammar alone.
    private static func read(_ text: String, with grammar: KeyValueGrammar) throws(KeyValueError) {
        switch grammar.option {
        case "--disk": _ = try DeviceOptions.diskConfiguration(text)
        case "--net": _ = try DeviceOptions.networkConfiguration(text)
        default: _ = try grammar.parse(text)
        }
    }

    @Test("the synopsis help shows is made from the key declarations")
    func synopsis() {
        #expect(DeviceOptions.disk.synopsis == "path=FILE[,readonly=on][,id=NAME][,direct=on]")
        #expect(DeviceOptions.network.synopsis == "tap=NAME[,mac=MAC][,offload=off]")
        #expect(DeviceOptions.disk.otherKeys == "bw=SIZE/MS[/BURST], ops=N/MS[/BURST]")
        #expect(
            DeviceOptions.network.otherKeys
                == "rx-bw=SIZE/MS[/BURST], rx-ops=N/MS[/BURST], tx-bw=SIZE/MS[/BURST], tx-ops=N/MS[/BURST]")
        #expect(sizedGrammar.otherKeys == "")
        #expect(sizedGrammar.synopsis == "size=SIZE[,name=NAME][,shared=on]")
    }

    @Test(
        "byte sizes print as they are read, in the largest exact unit",
        arguments: [
            (128 << 20, "128M"), (1 << 30, "1G"), (3 << 29, "1536M"), (4096, "4K"), (4097, "4097"), (0, "0"), (1 << 40, "1024G"),
        ] as [(UInt64, String)])
    func byteSizeText(size: UInt64, text: String) {
        #expect(ValueSyntax.byteSizeText(size) == text)
        #expect(ValueSyntax.byteSize(text) == size)
    }

    @Test("toggles are on or off, nothing else")
    func toggles() {
        #expect(ValueSyntax.toggle("on") == true)
        #expect(ValueSyntax.toggle("off") == false)
        for text in ["", "On", "ON", "yes", "no", "true", "false", "1", "0", "on "] {
            #expect(ValueSyntax.toggle(text) == nil, "\(text)")
        }
    }

    // MARK: boot

    @Test("boot's defaults come from its declarations; the device options fill the configuration")
    func bootParse() throws {
        let plain = try Boot.parse(["--kernel", "/k"])
        #expect(plain.configuration.kernelPath == "/k")
        #expect(plain.configuration.memorySize == MachineConfiguration.defaultMemorySize)
        #expect(plain.configuration.vcpuCount == 1)
        #expect(plain.configuration.kernelFormat == .automatic)
        #expect(plain.configuration.disks.isEmpty && plain.configuration.networks.isEmpty && !plain.configuration.rng)
        #expect(plain.timeout == nil && !plain.reportBootTime && !plain.reportMemory)
        // What help shows as a default is what a command line without the option gets.
        #expect(ValueSyntax.byteSize(try #require(CommandOption<Boot>.memory.defaultValue)) == plain.configuration.memorySize)
        #expect(Int(try #require(CommandOption<Boot>.cpus.defaultValue)) == plain.configuration.vcpuCount)

        let full = try Boot.parse([
            "--kernel=/k", "--memory", "256M", "--cpus=4", "--format", "elf", "--cmdline", "console=ttyS0", "--initrd", "/i",
            "--cpuid-mask", "popcnt", "--timeout", "2.5", "--report-memory",
            "--disk", "path=/a,readonly=on,id=x,direct=on", "--disk", "/b",
            "--net", "tap=t0,mac=02:00:00:00:00:01,offload=off", "--net", "t1", "--rng",
        ])
        let configuration = full.configuration
        #expect(configuration.memorySize == 256 << 20 && configuration.vcpuCount == 4 && configuration.kernelFormat == .elf)
        #expect(configuration.commandLine == "console=ttyS0" && configuration.initrdPath == "/i")
        #expect(configuration.cpuidMask.map(\.name) == ["popcnt"])
        #expect(full.timeout == 2.5 && full.reportMemory)
        #expect(
            configuration.disks == [
                DiskConfiguration(path: "/a", readOnly: true, id: "x", directIO: true), DiskConfiguration(path: "/b"),
            ])
        #expect(
            configuration.networks == [
                NetworkConfiguration(tap: "t0", mac: MACAddress([2, 0, 0, 0, 0, 1]), offloads: false),
                NetworkConfiguration(tap: "t1"),
            ])
        #expect(configuration.rng)
    }

    @Test("--boot-timer sets MachineConfiguration.bootTimer, --report-boot-time implies it, and it is off by default")
    func bootTimer() throws {
        #expect(MachineConfiguration(kernelPath: "/k").bootTimer == false)
        #expect(try Boot.parse(["--kernel", "/k"]).configuration.bootTimer == false)
        let timer = try Boot.parse(["--kernel", "/k", "--boot-timer"])
        #expect(timer.configuration.bootTimer && !timer.reportBootTime)
        let report = try Boot.parse(["--kernel", "/k", "--report-boot-time"])
        #expect(report.configuration.bootTimer && report.reportBootTime)
    }

    @Test("boot's bad values are usage errors from the parser or from MachineConfiguration.validate()", arguments: badBootLines)
    func bootErrors(arguments: [String], message: String) {
        #expect(throws: UsageError(message)) { try Boot.parse(["--kernel", "/k"] + arguments) }
    }

    @Test("boot without --kernel is a usage error")
    func bootWithoutKernel() {
        #expect(throws: UsageError("missing required option '--kernel <file>'")) { try Boot.parse(["--cpus", "2"]) }
    }

    // MARK: dump-dtb

    @Test("dump-dtb takes boot's device options: each is a virtio-mmio slot")
    func dumpDTBParse() throws {
        let dump = try DumpDTB.parse([
            "--arch", "aarch64", "--disk", "/a", "--net", "t0", "--rng", "--virtio-devices", "2", "out.dtb",
        ])
        #expect(dump.arch == "aarch64" && dump.output == "out.dtb")
        #expect(dump.configuration.disks == [DiskConfiguration(path: "/a")])
        #expect(dump.virtioDeviceCount == 5)
        let plain = try DumpDTB.parse(["-", "--arch=arm64", "--cpus", "512"])
        #expect(plain.output == "-" && plain.virtioDeviceCount == 0 && plain.configuration.vcpuCount == 512)
        #expect(plain.configuration.memorySize == MachineConfiguration.defaultMemorySize)
    }

    @Test(
        "dump-dtb's bad values are usage errors, checked by the library",
        arguments: [
            (["--cpus", "zz"], "--cpus 'zz': not a whole number"),
            (["--cpus", "513"], "--cpus: 513 vCPUs requested; between 1 and 512 are supported on aarch64"),
            (["--memory", "2M"], "--memory: guest memory of 2097152 bytes is too small for aarch64 (at least 4 MiB)"),
            (
                ["--virtio-devices", "33"],
                "--virtio-devices, --disk, --net and --rng: 33 virtio devices requested; between 0 and 32 are supported"
            ),
            (
                ["--virtio-devices", "32", "--rng"],
                "--virtio-devices, --disk, --net and --rng: 33 virtio devices requested; between 0 and 32 are supported"
            ),
            (["--disk", "path=/a,readonly"], "--disk 'path=/a,readonly': 'readonly' is not key=value"),
            (["--net", "tap=a:b"], "--net: 'a:b' is not an interface name (1-15 bytes, no '/', ':' or spaces)"),
            (["--cmdline", "a\u{0}b"], "--cmdline: the kernel command line contains a NUL character"),
            (["--arch", "x86_64"], "--arch 'x86_64': unsupported architecture; device trees are built for aarch64 only"),
            (["--kernel", "k"], "unknown option '--kernel'"),
            (["second.dtb"], "unexpected argument 'second.dtb'"),
        ] as [([String], String)])
    func dumpDTBErrors(arguments: [String], message: String) {
        #expect(throws: UsageError(message)) { try DumpDTB.parse(["--arch", "aarch64", "first.dtb"] + arguments) }
    }

    @Test("dump-dtb without --arch or OUT is a usage error")
    func dumpDTBMissing() {
        #expect(throws: UsageError("missing required option '--arch <arch>'")) { try DumpDTB.parse(["x.dtb"]) }
        #expect(throws: UsageError("missing argument <OUT>")) { try DumpDTB.parse(["--arch", "aarch64"]) }
    }

    // MARK: help

    @Test("help is generated from the declarations: one line per option, shared options alike in both commands")
    func help() throws {
        let boot = Boot.help.rendered(usage: Command.boot.usage)
        let dump = DumpDTB.help.rendered(usage: Command.dumpDTB.usage)
        // The --cpus line, as its one declaration describes it.
        let cpus = CommandOption<Boot>.cpus
        let line =
            "  " + cpus.synopsis + String(repeating: " ", count: CommandHelp.helpColumn - 2 - cpus.synopsis.count)
            + cpus.help + " (default: \(try #require(cpus.defaultValue)))\n"
        #expect(line == "  --cpus <n>              Number of vCPUs. (default: 1)\n")
        #expect(boot.contains("\n" + line))
        #expect(dump.contains("\n" + line))
        for (text, syntax) in [(boot, Boot.syntax.options.map(\.synopsis)), (dump, DumpDTB.syntax.options.map(\.synopsis))] {
            #expect(Set(syntax).count == syntax.count, "an option declared twice")
            // A synopsis too long for its column has its help on the next line.
            for synopsis in syntax {
                #expect(
                    text.contains("\n  \(synopsis) ") || text.contains("\n  \(synopsis)\n"), "help lacks \(synopsis)")
            }
        }
        #expect(
            boot.contains(
                "  --disk <disk>           A virtio-blk disk:\n                          \(DeviceOptions.disk.synopsis)\n"))
        #expect(boot.contains("  --boot-timer            Attach the boot-timer device (port 0x440).\n"))
        // The discussion's forms come from the grammars too.
        #expect(boot.contains("\n  --disk path=FILE[,readonly=on][,id=NAME][,direct=on]\n"))
        #expect(boot.contains("\n  --net tap=NAME[,mac=MAC][,offload=off]\n"))
    }
}
