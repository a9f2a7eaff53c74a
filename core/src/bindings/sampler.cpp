// Logits -> token.
#include "bindings.h"

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "bitmamba/sampler.h"

namespace bm::bindings {

void bind_sampler(py::module_& m) {
    py::class_<Sampler>(m, "Sampler")
        .def(py::init([](int vocab, float temperature, int top_k, float top_p, float min_p, float repetition_penalty,
                         int penalty_window, std::vector<int32_t> protected_ids, uint64_t seed) {
                 SamplerConfig c;
                 c.temperature = temperature;
                 c.top_k = top_k;
                 c.top_p = top_p;
                 c.min_p = min_p;
                 c.repetition_penalty = repetition_penalty;
                 c.penalty_window = penalty_window;
                 c.protected_ids = std::move(protected_ids);
                 c.seed = seed;
                 return std::make_unique<Sampler>(vocab, c);
             }),
             py::arg("vocab_size"), py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.9f,
             py::arg("min_p") = 0.05f, py::arg("repetition_penalty") = 1.0f, py::arg("penalty_window") = 256,
             py::arg("protected_ids") = std::vector<int32_t>{}, py::arg("seed") = 0)
        .def(
            "sample",
            [](Sampler& s, carray<float> logits) {
                if (logits.ndim() != 1 || logits.shape(0) != s.vocab_size())
                    throw std::invalid_argument("logits must have vocab_size values");
                std::vector<float> buf(logits.data(), logits.data() + logits.size());
                py::gil_scoped_release nogil;
                return s.sample(buf.data());
            },
            py::arg("logits"))
        .def("accept", &Sampler::accept, py::arg("token"))
        .def("reset_history", &Sampler::reset_history)
        .def("reseed", &Sampler::reseed, py::arg("seed"))
        .def_property_readonly("vocab_size", &Sampler::vocab_size);
}

}  // namespace bm::bindings
