// AsciiBpe: GPT-2's byte-level BPE for ASCII text (bitmamba/bpe.h; bitmamba_lsp/engine/tokenizer.py).
#include "bindings.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bitmamba/bpe.h"

namespace bm::bindings {

void bind_bpe(py::module_& m) {
    py::class_<AsciiBpe>(m, "AsciiBpe", "GPT-2's byte-level BPE for ASCII text (bitmamba/bpe.h)")
        .def(py::init([](carray<int32_t> merges, carray<int32_t> byte_ids, int32_t first_merged) {
                 if (merges.ndim() != 2 || merges.shape(1) != 2)
                     throw std::invalid_argument("merges must be an [n, 2] array of id pairs");
                 if (byte_ids.ndim() != 1 || byte_ids.shape(0) != 256)
                     throw std::invalid_argument("byte_ids must hold the id of each of the 256 bytes");
                 const int32_t* mp = merges.data();
                 const int32_t* bp = byte_ids.data();
                 const size_t n = static_cast<size_t>(merges.shape(0));
                 py::gil_scoped_release nogil;
                 return new AsciiBpe(mp, n, bp, first_merged);
             }),
             py::arg("merges"), py::arg("byte_ids"), py::arg("first_merged"))
        .def(
            "encode",
            [](const AsciiBpe& bpe, const std::string& text) -> py::object {
                std::vector<int32_t> ids;
                bool ok;
                {
                    py::gil_scoped_release nogil;
                    ids.reserve(text.size() / 3 + 1);
                    ok = bpe.encode(text.data(), text.size(), ids);
                }
                if (!ok) return py::none();
                py::array_t<int32_t> out(static_cast<py::ssize_t>(ids.size()));
                std::copy(ids.begin(), ids.end(), out.mutable_data());
                return std::move(out);
            },
            py::arg("text"),
            "The ids of `text` (int32), or None when a byte is outside printable ASCII, tab, LF and CR")
        .def_property_readonly("merges", &AsciiBpe::merges);
}

}  // namespace bm::bindings
