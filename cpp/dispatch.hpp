// CPU detection, the FASTLOSS_ISA override, the active KernelTable and the thread count.
#pragma once

#include <string>
#include <vector>

#include "kernels.hpp"

namespace fastloss {

// Paths compiled into this build, in order of preference (best last).
std::vector<std::string> compiled_isas();
// Compiled paths this CPU (and its OS) can run.
std::vector<std::string> available_isas();

// Picks the best available path, or the one FASTLOSS_ISA names. Throws std::runtime_error with a
// readable message when FASTLOSS_ISA names an unknown path or one this CPU cannot run.
void init_dispatch();

const KernelTable& active_table();
// Switches the active path (used by tests to run every path); throws std::invalid_argument for a
// path that is not available.
void set_active_isa(const std::string& name);

int num_threads();
void set_num_threads(int n);
int default_num_threads();

}  // namespace fastloss
