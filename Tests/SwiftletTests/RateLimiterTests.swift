import Synchronization
import Testing

@testable import SwiftletDevices

/// A clock the test moves by hand.
final class FakeClock: RateLimiterClock {
    private let now = Mutex<UInt64>(0)
    init(_ start: UInt64 = 0) { now.withLock { $0 = start } }
    func nanoseconds() -> UInt64 { now.withLock { $0 } }
    func advance(nanoseconds: UInt64) { now.withLock { $0 += nanoseconds } }
    func advance(milliseconds: UInt64) { advance(nanoseconds: milliseconds * 1_000_000) }
}

private let millisecond: UInt64 = 1_000_000

extension TokenBucket {
    /// `waitTime(for:now:)` on a copy (the refill it does changes nothing that matters here).
    fileprivate func waitTimeCopy(for tokens: UInt64, now: UInt64) -> UInt64 {
        var copy = self
        return copy.waitTime(for: tokens, now: now)
    }
}

/// Token-bucket arithmetic (Firecracker's semantics) and the two-bucket limiter, against made-up
/// times: no KVM, no sleeping.
@Suite("Rate limiter: token buckets")
struct RateLimiterTests {
    @Test("a bucket starts full, and a request it holds is allowed and taken")
    func startsFull() throws {
        var bucket = try #require(TokenBucket(size: 1000, refillTimeMilliseconds: 100))
        #expect(bucket.availableTokens(now: 0) == 1000)
        #expect(bucket.consume(600, now: 0) == true)
        #expect(bucket.availableTokens(now: 0) == 400)
        #expect(bucket.consume(401, now: 0) == false)
        #expect(bucket.availableTokens(now: 0) == 400, "a refused request takes nothing")
        #expect(bucket.consume(400, now: 0) == true)
        #expect(bucket.availableTokens(now: 0) == 0)
    }

    @Test("tokens come back continuously at size per refill time, capped at the size")
    func refillsContinuously() throws {
        // 1000 tokens per 100 ms: 10 per millisecond, 1 per 100 µs.
        var bucket = try #require(TokenBucket(size: 1000, refillTimeMilliseconds: 100))
        #expect(bucket.consume(1000, now: 0) == true)
        #expect(bucket.availableTokens(now: 1 * millisecond) == 10)
        #expect(bucket.availableTokens(now: 50 * millisecond) == 500)
        #expect(bucket.availableTokens(now: 100 * millisecond - 1) == 999)
        #expect(bucket.availableTokens(now: 100 * millisecond) == 1000)
        #expect(bucket.availableTokens(now: 10_000 * millisecond) == 1000, "never above the size")
    }

    @Test("fractions of a token are carried between refills, not lost")
    func carriesFractions() throws {
        // 3 tokens per 10 ms: one every 3.333... ms.
        var bucket = try #require(TokenBucket(size: 3, refillTimeMilliseconds: 10))
        #expect(bucket.consume(3, now: 0) == true)
        var now: UInt64 = 0
        // 100 refills 0.1 ms apart (each earns 0.03 of a token): 10 ms in all = 3 tokens.
        for _ in 0..<100 {
            now += millisecond / 10
            _ = bucket.availableTokens(now: now)
        }
        #expect(bucket.availableTokens(now: now) == 3)
        #expect(bucket.consume(3, now: now) == true)
        // 3.333 ms earns one token, 3.334 ms exactly one and a carried fraction.
        #expect(bucket.availableTokens(now: now + 3_333_333) == 0)
        #expect(bucket.availableTokens(now: now + 3_333_334) == 1)
    }

    @Test("the wait answer is the exact time until the request fits")
    func waitTimeIsExact() throws {
        var bucket = try #require(TokenBucket(size: 1000, refillTimeMilliseconds: 100))
        #expect(bucket.waitTime(for: 1000, now: 0) == 0)
        #expect(bucket.consume(1000, now: 0) == true)
        // 250 tokens take 25 ms.
        #expect(bucket.waitTime(for: 250, now: 0) == 25 * millisecond)
        #expect(bucket.waitTime(for: 250, now: 10 * millisecond) == 15 * millisecond)
        #expect(bucket.consume(250, now: 25 * millisecond - 1) == false)
        #expect(bucket.consume(250, now: 25 * millisecond) == true)
        // Round up: 1 token of 3-per-10-ms takes 3.333... ms, answered as 3_333_334 ns.
        var slow = try #require(TokenBucket(size: 3, refillTimeMilliseconds: 10))
        #expect(slow.consume(3, now: 0) == true)
        let wait = slow.waitTime(for: 1, now: 0)
        #expect(wait == 3_333_334)
        #expect(slow.consume(1, now: wait - 1) == false)
        #expect(slow.consume(1, now: wait) == true)
    }

    @Test("the one-time burst is spent first and never refilled")
    func oneTimeBurst() throws {
        var bucket = try #require(TokenBucket(size: 100, refillTimeMilliseconds: 100, oneTimeBurst: 500))
        #expect(bucket.availableTokens(now: 0) == 600)
        #expect(bucket.consume(450, now: 0) == true)
        #expect(bucket.burstRemaining == 50)
        #expect(bucket.balance == 100, "the bucket's own tokens are untouched while the burst covers the request")
        // 80: 50 from the burst, 30 from the bucket.
        #expect(bucket.consume(80, now: 0) == true)
        #expect(bucket.burstRemaining == 0)
        #expect(bucket.balance == 70)
        // A second later the bucket is full again; the burst stays spent.
        #expect(bucket.availableTokens(now: 1000 * millisecond) == 100)
        #expect(bucket.burstRemaining == 0)
    }

    @Test("a request larger than the burst takes the whole burst and the rest from the bucket")
    func burstThenBucket() throws {
        var bucket = try #require(TokenBucket(size: 100, refillTimeMilliseconds: 100, oneTimeBurst: 30))
        // While burst remains the bucket is untouched (full), so such a request is always allowed.
        #expect(bucket.consume(20, now: 0) == true)
        #expect(bucket.burstRemaining == 10 && bucket.balance == 100)
        #expect(bucket.consume(100, now: 0) == true)  // 10 from the burst, 90 from the bucket
        #expect(bucket.burstRemaining == 0 && bucket.balance == 10)
        #expect(bucket.consume(11, now: 0) == false)
        #expect(bucket.waitTime(for: 11, now: 0) == 1 * millisecond)
    }

    @Test("a request larger than the bucket is allowed out of debt, and the debt blocks everything until paid")
    func overConsumptionGoesIntoDebt() throws {
        var bucket = try #require(TokenBucket(size: 1000, refillTimeMilliseconds: 100))
        #expect(bucket.consume(400, now: 0) == true)  // 600 left
        // 2500 > size: allowed although only 600 are there; the bucket owes 1900.
        #expect(bucket.consume(2500, now: 0) == true)
        #expect(bucket.balance == -1900)
        #expect(bucket.availableTokens(now: 0) == 0)
        // Nothing, not even 0 tokens, until 1900 tokens have come back (190 ms).
        #expect(bucket.waitTime(for: 0, now: 0) == 190 * millisecond)
        #expect(bucket.waitTime(for: 1, now: 0) == 190 * millisecond + 100_000)
        #expect(bucket.waitTime(for: 5000, now: 0) == 190 * millisecond, "another oversized one waits only for the debt")
        #expect(bucket.consume(0, now: 190 * millisecond - 1) == false)
        #expect(bucket.balance == -1)
        #expect(bucket.consume(0, now: 190 * millisecond) == true)
        #expect(bucket.balance == 0)
        // Out of debt: the next oversized request goes at once, from an empty bucket.
        #expect(bucket.consume(1001, now: 190 * millisecond) == true)
        #expect(bucket.balance == -1001)
        // Refilling pays the debt first, then fills to the size.
        #expect(bucket.availableTokens(now: 190 * millisecond + 300 * millisecond) == 1000)
    }

    @Test("charging after the fact may go into debt, which the wait answer then includes")
    func chargeAfterTheFact() throws {
        var bucket = try #require(TokenBucket(size: 100, refillTimeMilliseconds: 10))
        bucket.charge(60, now: 0)
        bucket.charge(60, now: 0)
        #expect(bucket.balance == -20)
        #expect(bucket.waitTime(for: 0, now: 0) == 2 * millisecond)
        #expect(bucket.waitTime(for: 50, now: 0) == 7 * millisecond)
    }

    @Test("a size or refill time of 0 makes no bucket, and an absent bucket limits nothing")
    func zeroAndAbsentBuckets() throws {
        #expect(TokenBucket(size: 0, refillTimeMilliseconds: 100) == nil)
        #expect(TokenBucket(size: 100, refillTimeMilliseconds: 0) == nil)
        #expect(TokenBucketLimit(size: 0, refillTimeMilliseconds: 1).problem != nil)
        #expect(TokenBucketLimit(size: 1, refillTimeMilliseconds: 0).problem != nil)
        #expect(TokenBucketLimit(size: 1, refillTimeMilliseconds: 1).problem == nil)
        let clock = FakeClock()
        var none = RateLimiter(RateLimit(), clock: clock)
        #expect(RateLimit().isUnlimited)
        for _ in 0..<1000 { #expect(none.consume(bytes: UInt64.max, operations: UInt64.max) == .allowed) }
        var bytesOnly = RateLimiter(
            RateLimit(bandwidth: TokenBucketLimit(size: 10, refillTimeMilliseconds: 1)), clock: clock)
        #expect(bytesOnly.operations == nil)
        for _ in 0..<1000 { #expect(bytesOnly.consume(bytes: 0, operations: 1) == .allowed) }
        #expect(bytesOnly.consume(bytes: 10) == .allowed)
        #expect(bytesOnly.consume(bytes: 1) == .throttled(nanoseconds: 100_000))
    }

    @Test("the limiter allows a request only when both buckets do, and then takes from both")
    func bytesAndOperationsTogether() throws {
        let clock = FakeClock(5_000 * millisecond)
        var limiter = RateLimiter(
            RateLimit(
                bandwidth: TokenBucketLimit(size: 4096, refillTimeMilliseconds: 1000),
                operations: TokenBucketLimit(size: 4, refillTimeMilliseconds: 1000)),
            clock: clock)
        // Ops run out first: four 512-byte requests, then 250 ms for the next operation.
        for _ in 0..<4 { #expect(limiter.consume(bytes: 512) == .allowed) }
        #expect(limiter.consume(bytes: 512) == .throttled(nanoseconds: 250 * millisecond))
        #expect(limiter.bandwidth?.balance == 2048, "a throttled request takes no bytes either")
        clock.advance(milliseconds: 250)
        #expect(limiter.consume(bytes: 512) == .allowed)
        #expect(limiter.bandwidth?.balance == 2560)  // 2048 + 1024 earned - 512
        // Now bytes run out first: 2560 left, and 3000 more than that need (3000-2560)/4.096 ms.
        #expect(limiter.operations?.balance == 0)
        clock.advance(milliseconds: 1000)  // both full again
        #expect(limiter.consume(bytes: 4000) == .allowed)
        let wait = limiter.waitTime(bytes: 3000)
        // 3000 - 96 = 2904 bytes at 4.096 bytes per ms = 708.984375 ms; ops (3 left) need nothing.
        #expect(wait == 708_984_375)
        #expect(limiter.consume(bytes: 3000) == .throttled(nanoseconds: wait))
        clock.advance(nanoseconds: wait)
        #expect(limiter.consume(bytes: 3000) == .allowed)
        // When both lack tokens the answer is the longer wait.
        #expect(limiter.consume(bytes: 0, operations: 2) == .allowed)  // 3 operations were left
        let bytesWait = limiter.bandwidth!.waitTimeCopy(for: 4096, now: clock.nanoseconds())
        let opsWait = limiter.operations!.waitTimeCopy(for: 4, now: clock.nanoseconds())
        #expect(limiter.waitTime(bytes: 4096, operations: 4) == max(bytesWait, opsWait))
    }

    @Test("huge sizes, requests and times neither overflow nor trap")
    func hugeValues() throws {
        var huge = try #require(TokenBucket(size: UInt64.max, refillTimeMilliseconds: UInt64.max, oneTimeBurst: UInt64.max))
        #expect(huge.refillTimeMilliseconds == TokenBucketLimit.maximumRefillTimeMilliseconds)
        #expect(huge.availableTokens(now: UInt64.max) == UInt64.max)
        #expect(huge.consume(UInt64.max, now: UInt64.max) == true)  // the burst
        #expect(huge.consume(UInt64.max, now: UInt64.max) == true)  // the bucket
        #expect(huge.balance == 0)
        #expect(huge.consume(0, now: UInt64.max) == true)
        #expect(huge.waitTime(for: UInt64.max, now: UInt64.max) == TokenBucketLimit.maximumRefillTimeMilliseconds * 1_000_000)
        var small = try #require(TokenBucket(size: 1, refillTimeMilliseconds: TokenBucketLimit.maximumRefillTimeMilliseconds))
        #expect(small.consume(UInt64.max, now: 0) == true, "oversized: allowed, into debt")
        #expect(small.balance == -(Int128(UInt64.max) - 1))
        #expect(small.waitTime(for: 0, now: 0) == UInt64.max, "saturates")
        var fast = try #require(TokenBucket(size: UInt64.max, refillTimeMilliseconds: 1))
        #expect(fast.consume(UInt64.max, now: 0) == true)
        #expect(fast.availableTokens(now: UInt64.max) == UInt64.max)
        #expect(fast.availableTokens(now: 0) == UInt64.max, "a clock going backwards earns nothing and breaks nothing")
        let clock = FakeClock(UInt64.max - 10)
        var limiter = RateLimiter(
            RateLimit(
                bandwidth: TokenBucketLimit(size: UInt64.max, refillTimeMilliseconds: 1, oneTimeBurst: UInt64.max),
                operations: TokenBucketLimit(size: UInt64.max, refillTimeMilliseconds: 1)),
            clock: clock)
        #expect(limiter.consume(bytes: UInt64.max, operations: UInt64.max) == .allowed)
        clock.advance(nanoseconds: 10)
        #expect(limiter.consume(bytes: UInt64.max, operations: 1) == .allowed)
        #expect(limiter.waitTime(bytes: UInt64.max) == 1 * millisecond)
    }
}
