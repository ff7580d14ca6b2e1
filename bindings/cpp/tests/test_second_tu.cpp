#include "second_tu.hpp"

std::vector<float> project_in_second_tu(const isoclip::Projector& p, const std::vector<float>& x,
                                       isoclip::Form form) {
    const std::size_t in = p.input_dim(isoclip::Modality::Image);
    const std::size_t out = p.output_dim(isoclip::Modality::Image, form);
    std::vector<float> y(x.size() / in * out);
    isoclip::ProjectionOptions o;
    o.modality(isoclip::Modality::Image).form(form);
    p.project(x, in, y, out, &o);
    return y;
}

isoclip::Projector load_in_second_tu(const std::string& path) {
    return isoclip::Projector::load(path);
}
