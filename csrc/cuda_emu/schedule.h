// Fiber schedules of the emulated device: the order in which the ready threads of a block run between
// synchronisation points. A correct kernel gives the same result under all of them; one with a missing
// barrier or a racy shared-memory access usually does not under some. Chosen by ERBNN_EMU_SCHEDULE or
// torch.ops.erbnn_emu._emu_set_schedule:
//   inorder        threads in linear order, each to its next synchronisation point, then collectives
//   reverse        the same, highest thread first
//   ahead          warp by warp (lowest first): a warp runs, completing its own collectives, until it
//                  waits at a block barrier or exits before the next warp starts (maximal warp skew)
//   ahead-reverse  the same, highest warp first
//   random:SEED    one random ready thread at a time, collectives completed at random moments
#pragma once

#include <cstdint>
#include <string>

namespace cuda_emu {

struct Schedule {
  enum class Order { InOrder, Reverse, Random } order = Order::InOrder;
  bool warps_ahead = false;
  uint64_t seed = 0;
};

Schedule parse_schedule(const std::string& spec);  // throws std::invalid_argument
std::string schedule_name(const Schedule& s);
Schedule current_schedule();
// Returns the previous schedule's name.
std::string set_schedule(const std::string& spec);

}  // namespace cuda_emu
