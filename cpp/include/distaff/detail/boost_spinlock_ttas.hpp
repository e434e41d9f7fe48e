// distaff's definition of Boost.Fiber's spinlock_ttas, included ahead of every Boost header in
// the core and the bindings (CMake passes it with -include). It takes the place of
// <boost/fiber/detail/spinlock_ttas.hpp> by defining that header's include guard first.
//
// Why: Boost 1.74's inline spinlock_ttas::lock() declares a `static thread_local std::minstd_rand`
// seeded from a std::random_device at the top of the function. Every call therefore reserves a
// ~5 KiB frame (the random_device) and, in a -fPIC module, then calls the TLS resolver for the
// thread-local's guard. That call's return address lands 5 KiB below the caller, on a second page
// of the fiber stack, and the lock is taken on every fiber park: each suspended execution kept a
// page more resident (docs/internals/scheduler.md, "Memory per suspended execution").
//
// Here the uncontended path is one exchange with no thread-local and no large frame; the
// generator lives in a separate, never-inlined function reached only after a collision. The
// object layout is Boost's (one atomic spinlock_status), and the locking protocol is the same, so
// this module's copy and libboost_fiber's interoperate on the same objects.
#ifndef DISTAFF_DETAIL_BOOST_SPINLOCK_TTAS_HPP
#define DISTAFF_DETAIL_BOOST_SPINLOCK_TTAS_HPP

#ifdef __cplusplus

#include <boost/version.hpp>

#if BOOST_VERSION >= 107400 && BOOST_VERSION < 109000 && !defined(BOOST_FIBERS_SPINLOCK_TTAS_H)
#define BOOST_FIBERS_SPINLOCK_TTAS_H

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <random>
#include <thread>

#include <boost/config.hpp>
#include <boost/fiber/detail/config.hpp>
#include <boost/fiber/detail/cpu_relax.hpp>
#include <boost/fiber/detail/spinlock_status.hpp>

namespace boost {
namespace fibers {
namespace detail {

class spinlock_ttas {
private:
    template <typename FBSplk>
    friend class spinlock_rtm;

    std::atomic<spinlock_status> state_{spinlock_status::unlocked};

    // Binary exponential backoff after the collision-th failed test-and-set.
    BOOST_NOINLINE static void backoff(std::size_t collisions) noexcept {
        static thread_local std::minstd_rand generator{std::random_device{}()};
        std::uniform_int_distribution<std::size_t> distribution{
            0, static_cast<std::size_t>(1)
                   << (std::min)(collisions,
                                 static_cast<std::size_t>(BOOST_FIBERS_CONTENTION_WINDOW_THRESHOLD))};
        const std::size_t z = distribution(generator);
        for (std::size_t i = 0; i < z; ++i) {
            cpu_relax();
        }
    }

    BOOST_NOINLINE void wait_while_locked() noexcept {
        std::size_t retries = 0;
        while (spinlock_status::locked == state_.load(std::memory_order_relaxed)) {
#if !defined(BOOST_FIBERS_SPIN_SINGLE_CORE)
            if (BOOST_FIBERS_SPIN_BEFORE_SLEEP0 > retries) {
                ++retries;
                cpu_relax();
            } else if (BOOST_FIBERS_SPIN_BEFORE_YIELD > retries) {
                static constexpr std::chrono::microseconds us0{0};
                std::this_thread::sleep_for(us0);
            } else {
                std::this_thread::yield();
            }
#else
            std::this_thread::yield();
#endif
        }
    }

public:
    spinlock_ttas() = default;

    spinlock_ttas(spinlock_ttas const&) = delete;
    spinlock_ttas& operator=(spinlock_ttas const&) = delete;

    void lock() noexcept {
        std::size_t collisions = 0;
        for (;;) {
            if (spinlock_status::locked == state_.load(std::memory_order_relaxed)) {
                wait_while_locked();
            }
            if (spinlock_status::locked !=
                state_.exchange(spinlock_status::locked, std::memory_order_acquire)) {
                return;
            }
            backoff(collisions++);
        }
    }

    bool try_lock() noexcept {
        return spinlock_status::unlocked ==
               state_.exchange(spinlock_status::locked, std::memory_order_acquire);
    }

    void unlock() noexcept { state_.store(spinlock_status::unlocked, std::memory_order_release); }
};

}  // namespace detail
}  // namespace fibers
}  // namespace boost

#endif  // Boost 1.74 – 1.89 and the header not yet seen
#endif  // __cplusplus
#endif  // DISTAFF_DETAIL_BOOST_SPINLOCK_TTAS_HPP
