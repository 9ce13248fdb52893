import SwiftletHost

/// The settings of one token bucket, as a plain value (a configuration's, a snapshot's): `size`
/// tokens, refilled from empty in `refillTimeMilliseconds`, plus `oneTimeBurst` extra tokens
/// available once from the start.
public struct TokenBucketLimit: Equatable, Codable, Sendable {
    /// The bucket's capacity in tokens (bytes or operations); the bucket starts full.
    public var size: UInt64
    /// How long an empty bucket takes to fill, in milliseconds: tokens come back at
    /// `size / refillTimeMilliseconds` per millisecond, continuously.
    public var refillTimeMilliseconds: UInt64
    /// Extra tokens spent before the bucket's own, once; never refilled (0: none).
    public var oneTimeBurst: UInt64

    /// The longest refill time a bucket takes: about 292 years, so that every refill computation
    /// fits 128-bit arithmetic (`UInt64(Int64.max)` nanoseconds).
    public static let maximumRefillTimeMilliseconds: UInt64 = UInt64(Int64.max) / 1_000_000

    /// A bucket of `size` tokens refilled in `refillTimeMilliseconds`, with `oneTimeBurst` extra.
    public init(size: UInt64, refillTimeMilliseconds: UInt64, oneTimeBurst: UInt64 = 0) {
        self.size = size
        self.refillTimeMilliseconds = refillTimeMilliseconds
        self.oneTimeBurst = oneTimeBurst
    }

    /// Why these settings make no bucket, or nil when they are usable: a size or refill time of 0
    /// (Firecracker treats those as "no limit"; Swiftlet asks the user to leave the bucket out), or
    /// a refill time above `maximumRefillTimeMilliseconds`.
    public var problem: String? {
        if size == 0 { return "the bucket size must be at least 1" }
        if refillTimeMilliseconds == 0 { return "the refill time must be at least 1 ms" }
        if refillTimeMilliseconds > Self.maximumRefillTimeMilliseconds {
            return "the refill time must be at most \(Self.maximumRefillTimeMilliseconds) ms"
        }
        return nil
    }
}

/// The limits of one device direction: a bandwidth bucket (bytes) and an operations bucket
/// (requests or frames), each optional (absent: that quantity is not limited).
public struct RateLimit: Equatable, Codable, Sendable {
    /// Bytes moved (a block request's data, a frame without its virtio-net header).
    public var bandwidth: TokenBucketLimit?
    /// Requests (every block request, including FLUSH and GET_ID) or frames.
    public var operations: TokenBucketLimit?

    /// Limits with these buckets.
    public init(bandwidth: TokenBucketLimit? = nil, operations: TokenBucketLimit? = nil) {
        self.bandwidth = bandwidth
        self.operations = operations
    }

    /// Whether neither bucket is set (no limit at all).
    public var isUnlimited: Bool { bandwidth == nil && operations == nil }
}

/// A token bucket with Firecracker's semantics (`rate_limiter/src/lib.rs`), as plain value
/// arithmetic: every operation takes the current time (`now`, in nanoseconds of any monotonic
/// clock), so tests drive it with made-up times.
///
/// - It starts full (`size` tokens) with `oneTimeBurst` extra tokens that are spent first and
///   never come back.
/// - Tokens come back continuously at `size` per `refillTime`, exactly: the fraction of a token
///   earned so far is carried to the next refill, so no time is lost to rounding. A full
///   bucket earns nothing.
/// - A request of `n` tokens (after what the burst covers) is allowed when the bucket holds `n`.
/// - A request larger than the bucket (`n > size`) could never be allowed that way; as in
///   Firecracker it is allowed whenever the bucket is not in debt, and the bucket goes into
///   debt by what it lacked (Firecracker empties the bucket and blocks the limiter for the time
///   the excess takes to refill; a negative balance is the same thing, kept in one number).
/// - A bucket in debt allows nothing (not even a request of 0 tokens) until refilling has paid
///   the debt.
/// - When a request is refused the bucket says how long until it would be allowed
///   (`waitTime(for:now:)`), rounded up to the nanosecond; Firecracker instead re-checks from a
///   100 ms timer.
///
/// While burst remains the bucket's own tokens are untouched (the burst goes first), so a
/// request is never refused before the burst is spent.
public struct TokenBucket: Equatable, Sendable {
    /// The capacity in tokens.
    public let size: UInt64
    /// The time an empty bucket takes to fill, in milliseconds.
    public let refillTimeMilliseconds: UInt64
    /// The burst given at creation.
    public let oneTimeBurst: UInt64
    /// What is left of the one-time burst.
    public private(set) var burstRemaining: UInt64
    /// Tokens in the bucket; negative: the debt of an oversized request.
    public private(set) var balance: Int128
    /// The time of the last refill.
    private var lastUpdate: UInt64 = 0
    /// `refillTimeMilliseconds` in nanoseconds.
    private let refillNanoseconds: UInt128
    /// Token-nanoseconds earned but not yet a whole token (less than `refillNanoseconds`).
    private var carry: UInt128 = 0

    /// A full bucket of `size` tokens refilled in `refillTimeMilliseconds`, with `oneTimeBurst`
    /// extra; nil when size or refill time is 0 (no bucket: the quantity is not limited). A
    /// refill time above `TokenBucketLimit.maximumRefillTimeMilliseconds` counts as that maximum.
    public init?(size: UInt64, refillTimeMilliseconds: UInt64, oneTimeBurst: UInt64 = 0) {
        guard size > 0, refillTimeMilliseconds > 0 else { return nil }
        self.size = size
        self.refillTimeMilliseconds = min(refillTimeMilliseconds, TokenBucketLimit.maximumRefillTimeMilliseconds)
        self.oneTimeBurst = oneTimeBurst
        self.burstRemaining = oneTimeBurst
        self.balance = Int128(size)
        self.refillNanoseconds = UInt128(self.refillTimeMilliseconds) * 1_000_000
    }

    /// The bucket `limit` describes (nil for a size or refill time of 0).
    public init?(_ limit: TokenBucketLimit) {
        self.init(size: limit.size, refillTimeMilliseconds: limit.refillTimeMilliseconds, oneTimeBurst: limit.oneTimeBurst)
    }

    /// The tokens available now, burst included (0 while in debt).
    public mutating func availableTokens(now: UInt64) -> UInt64 {
        refill(now: now)
        let own = UInt64(clamping: max(balance, 0))
        return own.addingReportingOverflow(burstRemaining).overflow ? UInt64.max : own + burstRemaining
    }

    /// How long until a request of `tokens` would be allowed, in nanoseconds (0: now; saturates
    /// at `UInt64.max`).
    public mutating func waitTime(for tokens: UInt64, now: UInt64) -> UInt64 {
        refill(now: now)
        let required = requiredBalance(for: tokens)
        guard balance < required else { return 0 }
        return time(toEarn: UInt128(required - balance))
    }

    /// Takes `tokens` if the bucket allows them now (see the type's description); returns false,
    /// taking nothing, when it does not.
    public mutating func consume(_ tokens: UInt64, now: UInt64) -> Bool {
        guard waitTime(for: tokens, now: now) == 0 else { return false }
        take(tokens)
        return true
    }

    /// Takes `tokens` whatever the balance (it may go into debt, or deeper): for work already done
    /// whose size was not known before (a received frame).
    public mutating func charge(_ tokens: UInt64, now: UInt64) {
        refill(now: now)
        take(tokens)
    }

    /// The balance a request of `tokens` needs: what the burst does not cover, or for a request
    /// larger than the bucket, only to be out of debt.
    private func requiredBalance(for tokens: UInt64) -> Int128 {
        let fromBucket = tokens - min(tokens, burstRemaining)
        return fromBucket <= size ? Int128(fromBucket) : 0
    }

    /// Spends the burst first, then the balance.
    private mutating func take(_ tokens: UInt64) {
        let fromBurst = min(tokens, burstRemaining)
        burstRemaining -= fromBurst
        balance -= Int128(tokens - fromBurst)
    }

    /// Adds the tokens earned since the last refill (whole tokens; the fraction is carried), up to
    /// `size`. A clock that went backwards earns nothing.
    private mutating func refill(now: UInt64) {
        guard now > lastUpdate else { return }
        // 2^62 ns (146 years) times a 64-bit size, plus a carry below 2^63, fits 128 bits.
        let elapsed = min(now - lastUpdate, 1 << 62)
        lastUpdate = now
        guard balance < Int128(size) else {
            carry = 0
            return
        }
        let earned = UInt128(elapsed) * UInt128(size) + carry
        let tokens = earned / refillNanoseconds
        let room = UInt128(Int128(size) - balance)
        if tokens >= room {
            balance = Int128(size)
            carry = 0
        } else {
            balance += Int128(tokens)
            carry = earned % refillNanoseconds
        }
    }

    /// The nanoseconds until `tokens` more have been earned: the least `t` with
    /// `t * size + carry >= tokens * refillNanoseconds`.
    private func time(toEarn tokens: UInt128) -> UInt64 {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: refillNanoseconds)
        guard !overflow else { return UInt64.max }
        guard needed > carry else { return 0 }
        let missing = needed - carry
        let size = UInt128(self.size)
        return UInt64(clamping: (missing + size - 1) / size)
    }
}

/// A source of monotonic time for rate limiters, in nanoseconds. Tests substitute a clock they
/// move by hand.
public protocol RateLimiterClock: Sendable {
    /// The time now, in nanoseconds; never less than an earlier answer.
    func nanoseconds() -> UInt64
}

/// CLOCK_MONOTONIC.
public struct MonotonicClock: RateLimiterClock {
    /// The clock (stateless).
    public init() {}
    /// CLOCK_MONOTONIC in nanoseconds.
    public func nanoseconds() -> UInt64 { monotonicNanoseconds() }
}

/// What a rate limiter says about a request.
public enum RateLimiterDecision: Equatable, Sendable {
    /// The request may go ahead; its tokens were taken.
    case allowed
    /// Not yet: nothing was taken, and the request would be allowed after this many nanoseconds
    /// (assuming nothing else takes tokens meanwhile).
    case throttled(nanoseconds: UInt64)
}

/// The limiter of one device direction: an optional bandwidth bucket (bytes) and an optional
/// operations bucket, read against an injected clock. A request is allowed only when both
/// buckets allow it, and then takes from both (the device asks before doing the work).
public struct RateLimiter: Sendable {
    /// Bytes; nil: not limited.
    public private(set) var bandwidth: TokenBucket?
    /// Operations; nil: not limited.
    public private(set) var operations: TokenBucket?
    /// What the limiter was made from.
    public let limit: RateLimit
    private let clock: any RateLimiterClock

    /// A limiter with full buckets as `limit` describes, reading `clock`.
    public init(_ limit: RateLimit, clock: any RateLimiterClock = MonotonicClock()) {
        self.limit = limit
        self.bandwidth = limit.bandwidth.flatMap { TokenBucket($0) }
        self.operations = limit.operations.flatMap { TokenBucket($0) }
        self.clock = clock
    }

    /// How long until a request of `bytes` and `operations` would be allowed, in nanoseconds
    /// (0: now); the longer of the two buckets' waits.
    public mutating func waitTime(bytes: UInt64, operations count: UInt64 = 1) -> UInt64 {
        let now = clock.nanoseconds()
        let bytesWait = bandwidth?.waitTime(for: bytes, now: now) ?? 0
        let operationsWait = operations?.waitTime(for: count, now: now) ?? 0
        return max(bytesWait, operationsWait)
    }

    /// Takes `bytes` and `operations` when both buckets allow them; otherwise takes nothing and
    /// says how long to wait.
    public mutating func consume(bytes: UInt64, operations count: UInt64 = 1) -> RateLimiterDecision {
        let wait = waitTime(bytes: bytes, operations: count)
        guard wait == 0 else { return .throttled(nanoseconds: wait) }
        charge(bytes: bytes, operations: count)
        return .allowed
    }

    /// Takes `bytes` and `operations` whatever the buckets hold (they may go into debt): for work
    /// whose size was known only once done, after `waitTime` said 0 for the smallest size.
    public mutating func charge(bytes: UInt64, operations count: UInt64 = 1) {
        let now = clock.nanoseconds()
        bandwidth?.charge(bytes, now: now)
        operations?.charge(count, now: now)
    }
}
