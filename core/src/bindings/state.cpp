// Recurrent state: copy, compare, serialise.
#include "bindings.h"

#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "bitmamba/model.h"

namespace bm::bindings {

void bind_state(py::module_& m) {
    py::class_<State>(m, "State")
        .def_property_readonly("nbytes", &State::n_bytes)
        .def_readwrite("n_tokens", &State::n_tokens)
        .def("copy",
             [](const State& s) {
                 auto c = std::make_unique<State>(s.layout());
                 c->copy_from(s);
                 return c;
             })
        .def("copy_from", &State::copy_from, py::arg("other"))
        .def("reset", &State::reset)
        .def("equals", &State::equals, py::arg("other"))
        .def("max_abs_diff", &State::max_abs_diff, py::arg("other"))
        .def("to_bytes", [](const State& s) { return py::bytes(s.to_bytes()); })
        .def(
            "load_bytes",
            [](State& s, py::bytes b) {
                std::string_view v = b;
                s.load_bytes(v.data(), v.size());
            },
            py::arg("data"))
        .def("to_numpy",
             [](const State& s) {
                 py::array_t<float> out(static_cast<py::ssize_t>(s.n_floats()));
                 std::memcpy(out.mutable_data(), s.data(), s.n_bytes());
                 return out;
             })
        .def("__eq__", [](const State& a, const State& b) { return a.equals(b); })
        .def("__repr__", [](const State& s) {
            return "<State n_tokens=" + std::to_string(s.n_tokens) + " bytes=" + std::to_string(s.n_bytes()) + ">";
        });
}

}  // namespace bm::bindings
