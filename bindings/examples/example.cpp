// Project image features with the C++ wrapper (the README's C++ example).
// Build: c++ -std=c++17 -I bindings/cpp example.cpp $(pkg-config --cflags --libs isoclip)
// Run:   ./example b16.safetensors
#include <cmath>
#include <cstdio>
#include <vector>

#include "isoclip.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s PROJECTOR_FILE\n", argv[0]);
        return 2;
    }
    try {
        isoclip::Projector projector = isoclip::Projector::load(argv[1]);
        const std::size_t d_in = projector.input_dim(), d_out = projector.output_dim();

        std::vector<float> features(3 * d_in);
        for (std::size_t i = 0; i < features.size(); i++) features[i] = std::sin(float(i));
        std::vector<float> embeddings(3 * d_out);

        isoclip::ProjectionOptions options;
        options.form(isoclip::Form::Compact).normalize(true);
        projector.project(features, d_in, embeddings, d_out, &options);

        float norm = 0;
        for (std::size_t j = 0; j < d_out; j++) norm += embeddings[j] * embeddings[j];
        std::printf("%zu -> %zu dims, |row 0| = %.4f, fingerprint %.12s...\n", d_in, d_out,
                    std::sqrt(norm), projector.fingerprint().c_str());
    } catch (const isoclip::Error& e) {
        std::fprintf(stderr, "%s: %s\n", e.status_name(), e.what());
        return 1;
    }
    return 0;
}
