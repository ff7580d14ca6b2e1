// Declarations shared by the two translation units of the C++ test: both include isoclip.hpp, so
// linking them checks that the header defines nothing twice (everything is inline or a template).
#pragma once

#include <cstddef>
#include <vector>

#include "isoclip.hpp"

/// Projects dense fp32 rows with the given form; compiled in the second translation unit.
std::vector<float> project_in_second_tu(const isoclip::Projector& p, const std::vector<float>& x,
                                       isoclip::Form form);

/// Loads a projector in the second translation unit and returns it (moved across TUs).
isoclip::Projector load_in_second_tu(const std::string& path);
