// NGramIndex: the cache language model's counts (bitmamba_lsp/lsp/cache_model.py).
#include "bindings.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "bitmamba/ngram.h"

namespace bm::bindings {

void bind_ngram(py::module_& m) {
    py::class_<NGramIndex>(m, "NGramIndex", "Next-token counts after every context of 1..order tokens (bitmamba/ngram.h)")
        .def(py::init<int, int>(), py::arg("order"), py::arg("vocab"))
        .def(
            "update",
            [](NGramIndex& ix, carray<int32_t> ids, size_t lo, size_t hi, int sign, py::object touching) {
                if (ids.ndim() != 1) throw std::invalid_argument("token ids must be a flat array");
                int64_t ta = -1, tb = -1;
                if (!touching.is_none()) {
                    auto t = touching.cast<std::pair<int64_t, int64_t>>();
                    ta = t.first;
                    tb = t.second;
                }
                const int32_t* p = ids.data();
                const size_t n = static_cast<size_t>(ids.shape(0));
                py::gil_scoped_release nogil;
                ix.update(p, n, lo, hi, sign, ta, tb);
            },
            py::arg("ids"), py::arg("lo"), py::arg("hi"), py::arg("sign"), py::arg("touching") = py::none(),
            "Add (sign > 0) or remove the n-grams whose next token is ids[i], lo <= i < hi; touching=(a, b): "
            "only those including a token of ids[a:b]")
        .def(
            "lookup",
            [](const NGramIndex& ix, carray<int32_t> ctx, int min_order, const NGramIndex* exclude) -> py::object {
                int64_t total = 0;
                std::vector<std::pair<int32_t, int32_t>> counts;
                const int k = ix.lookup(ctx.data(), static_cast<size_t>(ctx.size()), min_order, exclude, total, counts);
                if (k == 0) return py::none();
                py::array_t<int32_t> toks(static_cast<py::ssize_t>(counts.size()));
                py::array_t<int32_t> cnts(static_cast<py::ssize_t>(counts.size()));
                auto t = toks.mutable_unchecked<1>();
                auto c = cnts.mutable_unchecked<1>();
                for (size_t i = 0; i < counts.size(); ++i) {
                    t(static_cast<py::ssize_t>(i)) = counts[i].first;
                    c(static_cast<py::ssize_t>(i)) = counts[i].second;
                }
                return py::make_tuple(k, total, toks, cnts);
            },
            py::arg("context"), py::arg("min_order"), py::arg("exclude") = nullptr,
            "(order, total, tokens, counts) of the longest context (>= min_order tokens) ending `context`, or None")
        .def("clear", &NGramIndex::clear)
        .def_property_readonly("order", &NGramIndex::order)
        .def_property_readonly("vocab", &NGramIndex::vocab)
        .def_property_readonly("tokens", &NGramIndex::tokens)
        .def_property_readonly("contexts", &NGramIndex::contexts)
        .def_property_readonly("nbytes", &NGramIndex::bytes);
}

}  // namespace bm::bindings
