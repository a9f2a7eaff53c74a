// Models: building them from the loader's tensors, and every forward call (each releases the GIL).
#include "bindings.h"

#include <climits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <optional>
#include <vector>

#include "bitmamba/model.h"
#include "bitmamba/profile.h"
#include "bitmamba/sampler.h"

namespace bm::bindings {

namespace {

// Convert the loader's dict into TensorViews. Float arrays must already be float32 C-contiguous
// (they are views of the mapped file); ternary entries are tuples:
//   ("codes", uint8 [rows, ceil(cols/4)], cols, scale) or ("int8", int8 [rows, cols], scale).
TensorMap tensor_map(const py::dict& d, std::vector<py::object>& keep) {
    TensorMap out;
    for (auto item : d) {
        const std::string name = py::str(item.first);
        TensorView v;
        py::handle h = item.second;
        if (py::isinstance<py::tuple>(h)) {
            py::tuple t = py::reinterpret_borrow<py::tuple>(h);
            const std::string kind = py::str(t[0]);
            if (kind == "codes" && t.size() == 4) {
                auto a = py::array_t<uint8_t, py::array::c_style>::ensure(t[1]);
                if (!a || a.ndim() != 2) throw FormatError("tensor '" + name + "': packed codes must be a 2-D uint8 array");
                v.data = a.data();
                v.shape = {a.shape(0), a.shape(1)};
                v.dtype = "u8";
                v.cols = t[2].cast<int64_t>();
                v.scale = t[3].cast<float>();
                keep.push_back(a);
            } else if (kind == "int8" && t.size() == 3) {
                auto a = py::array_t<int8_t, py::array::c_style>::ensure(t[1]);
                if (!a || a.ndim() != 2) throw FormatError("tensor '" + name + "': ternary values must be a 2-D int8 array");
                v.data = a.data();
                v.shape = {a.shape(0), a.shape(1)};
                v.dtype = "i8";
                v.cols = a.shape(1);
                v.scale = t[2].cast<float>();
                keep.push_back(a);
            } else {
                throw FormatError("tensor '" + name + "': unknown ternary entry kind '" + kind + "'");
            }
        } else {
            py::array arr = py::reinterpret_borrow<py::array>(h);
            if (!py::isinstance<py::array>(h) || !arr.dtype().is(py::dtype::of<float>()) ||
                !(arr.flags() & py::array::c_style))
                throw FormatError("tensor '" + name + "': expected a C-contiguous float32 array");
            v.data = arr.data();
            for (py::ssize_t i = 0; i < arr.ndim(); ++i) v.shape.push_back(arr.shape(i));
            v.dtype = "f32";
            keep.push_back(arr);
        }
        out.emplace(name, std::move(v));
    }
    return out;
}

std::vector<int32_t> token_vector(const py::handle& tokens) {
    auto a = carray<int64_t>::ensure(tokens);
    if (!a) throw std::invalid_argument("tokens must be a sequence of integers");
    if (a.ndim() != 1) throw std::invalid_argument("tokens must be one-dimensional");
    std::vector<int32_t> out(a.shape(0));
    for (py::ssize_t i = 0; i < a.shape(0); ++i) {
        const int64_t v = a.at(i);
        if (v < INT32_MIN || v > INT32_MAX) throw std::out_of_range("token id " + std::to_string(v) + " is out of range");
        out[i] = static_cast<int32_t>(v);
    }
    return out;
}


// ------------------------------------------------------------------ the forward calls

void check_token(const Model& md, int64_t token) {
    if (token < 0 || token >= md.info().vocab_size)
        throw std::out_of_range("token id " + std::to_string(token) + " is outside the vocabulary");
}

py::array_t<float> step(Model& md, State& st, int64_t token) {
    check_token(md, token);
    py::array_t<float> logits(md.info().vocab_size);
    float* out = logits.mutable_data();
    {
        py::gil_scoped_release nogil;
        md.step(st, static_cast<int32_t>(token), out);
    }
    return logits;
}

int32_t step_sample(Model& md, State& st, int64_t token, Sampler& sampler) {
    check_token(md, token);
    if (sampler.vocab_size() != md.info().vocab_size)
        throw std::invalid_argument("sampler vocabulary size differs from the model's");
    py::gil_scoped_release nogil;
    md.step(st, static_cast<int32_t>(token), sampler.logits_buffer());
    if (!md.profiling()) return sampler.sample(sampler.logits_buffer());
    const int64_t t0 = StageClock::now();
    const int32_t next = sampler.sample(sampler.logits_buffer());
    md.clock().add(kStageSample, t0, StageClock::now());
    return next;
}

py::tuple prefill(Model& md, State& st, py::handle tokens, bool logits, bool all_logits, std::vector<int> snapshot_at,
                  std::optional<std::vector<State*>> into) {
    std::vector<int32_t> ids = token_vector(tokens);
    const int T = static_cast<int>(ids.size());
    if (T == 0) throw std::invalid_argument("prefill needs at least one token");
    const int V = md.info().vocab_size;
    py::object out = py::none();
    float* lp = nullptr;
    if (all_logits) {
        auto a = py::array_t<float>({T, V});
        lp = a.mutable_data();
        out = a;
    } else if (logits) {
        auto a = py::array_t<float>(V);
        lp = a.mutable_data();
        out = a;
    }
    std::vector<std::unique_ptr<State>> snaps;
    std::vector<std::pair<int, State*>> sp;
    if (into) {  // the caller's states receive the snapshots (no allocation: the speculative decode loop)
        if (into->size() < snapshot_at.size()) throw std::invalid_argument("fewer states in `into` than snapshot positions");
        for (std::size_t i = 0; i < snapshot_at.size(); ++i) {
            State* s = (*into)[i];
            if (!s || s == &st) throw std::invalid_argument("`into` states must be distinct from the prefilled state");
            sp.emplace_back(snapshot_at[i], s);
        }
    } else {
        for (int p : snapshot_at) {
            snaps.push_back(md.new_state());
            sp.emplace_back(p, snaps.back().get());
        }
    }
    {
        py::gil_scoped_release nogil;
        md.prefill(st, ids.data(), T, lp, all_logits, sp);
    }
    py::list states;
    if (into) {
        for (std::size_t i = 0; i < snapshot_at.size(); ++i) states.append(py::cast((*into)[i], py::return_value_policy::reference));
    } else {
        for (auto& s : snaps) states.append(py::cast(std::move(s)));
    }
    return py::make_tuple(out, states);
}

py::array_t<float> step_batch(Model& md, std::vector<State*> states, py::handle tokens) {
    std::vector<int32_t> ids = token_vector(tokens);
    if (ids.size() != states.size()) throw std::invalid_argument("one token per state");
    const int n = static_cast<int>(ids.size());
    auto logits = py::array_t<float>({n, md.info().vocab_size});
    float* lp = logits.mutable_data();
    {
        py::gil_scoped_release nogil;
        md.step_batch(states.data(), ids.data(), n, lp);
    }
    return logits;
}

// ------------------------------------------------------------------ LoRA

// layers: None (detach) or one (A_in, B_in, A_out, B_out) tuple per weight layer, A [rank, in] and
// B [out, rank] float32 (other dtypes are converted). The model copies them.
void set_lora(Model& md, py::object layers, float scale) {
    std::vector<LoraLayerViews> views;
    std::vector<py::object> keep;
    if (!layers.is_none()) {
        int l = 0;
        for (py::handle item : layers) {
            if (!py::isinstance<py::tuple>(item) || py::len(item) != 4)
                throw std::invalid_argument("set_lora: layer " + std::to_string(l) +
                                            " must be a tuple (A_in, B_in, A_out, B_out)");
            py::tuple t = py::reinterpret_borrow<py::tuple>(item);
            LoraLayerViews lv;
            for (int k = 0; k < 2; ++k) {
                auto A = carray<float>::ensure(t[2 * k]);
                auto B = carray<float>::ensure(t[2 * k + 1]);
                if (!A || !B || A.ndim() != 2 || B.ndim() != 2 || B.shape(1) != A.shape(0))
                    throw FormatError("LoRA: layer " + std::to_string(l) + (k == 0 ? " in_proj" : " out_proj") +
                                      ": A must be [rank, in] and B [out, rank]");
                lv[k] = LoraView{A.data(), B.data(), static_cast<int>(A.shape(0)), static_cast<int>(A.shape(1)),
                                 static_cast<int>(B.shape(0))};
                keep.push_back(A);
                keep.push_back(B);
            }
            views.push_back(lv);
            ++l;
        }
        if (views.empty()) throw FormatError("LoRA: the adapter has no layers");
    }
    py::gil_scoped_release nogil;
    md.set_lora(views, scale);
}

// ------------------------------------------------------------------ profiling and facts

void set_profiling(Model& md, bool on) {
    std::lock_guard<std::mutex> lk(md.lock());
    md.set_profiling(on);
    md.clock().reset();
}

py::dict profile(Model& md) {
    std::lock_guard<std::mutex> lk(md.lock());
    const StageClock& c = md.clock();
    py::dict d;
    const char* names[kStageCount] = {"norm_quantize", "matmul", "lm_head", "conv_scan", "step", "sampling"};
    for (int i = 0; i < kStageCount; ++i) d[names[i]] = c.ns[i] / 1e6;  // milliseconds
    d["steps"] = c.steps;
    return d;
}

py::dict info(const Model& md) {
    py::dict d;
    d["arch"] = md.info().arch;
    d["vocab_size"] = md.info().vocab_size;
    d["d_model"] = md.info().d_model;
    d["n_layers"] = md.info().n_layers;
    for (const auto& kv : md.info().dims) d[py::str(kv.first)] = kv.second;
    return d;
}

// ------------------------------------------------------------------ building

std::unique_ptr<Model> build_bitmamba2(py::dict tensors, int vocab, int d_model, int n_layers, int n_heads, int threads,
                                       const std::string& level, int repeat_start, int repeat_end, int repeat_count) {
    std::vector<py::object> keep;
    TensorMap tm = tensor_map(tensors, keep);
    const KernelSet* k = &kernels_by_name(level);
    LayerRepeat r{repeat_start, repeat_end, repeat_count};
    py::gil_scoped_release nogil;
    return make_bitmamba2(tm, vocab, d_model, n_layers, n_heads, threads, k, r);
}

Mamba1Config mamba1_config(const py::dict& config) {
    Mamba1Config c;
    auto geti = [&](const char* k, int& dst) {
        if (config.contains(k)) dst = config[k].cast<int>();
    };
    geti("vocab_size", c.vocab_size);
    geti("d_model", c.d_model);
    geti("n_layers", c.n_layers);
    geti("d_inner", c.d_inner);
    geti("d_state", c.d_state);
    geti("dt_rank", c.dt_rank);
    geti("d_conv", c.d_conv);
    if (config.contains("norm_eps")) c.norm_eps = config["norm_eps"].cast<float>();
    if (config.contains("gate")) c.gate = config["gate"].cast<std::string>();
    if (config.contains("quantize")) c.quantize = config["quantize"].cast<bool>();
    if (config.contains("lm_head")) c.lm_head = config["lm_head"].cast<std::string>();
    return c;
}

std::unique_ptr<Model> build_mamba1(py::dict tensors, py::dict config, int threads, const std::string& level) {
    const Mamba1Config c = mamba1_config(config);
    std::vector<py::object> keep;
    TensorMap tm = tensor_map(tensors, keep);
    const KernelSet* k = &kernels_by_name(level);
    py::gil_scoped_release nogil;
    return make_mamba1(tm, c, threads, k);
}

}  // namespace

void bind_model(py::module_& m) {
    py::class_<Model>(m, "Model")
        .def("new_state", &Model::new_state)
        .def("step", &step, py::arg("state"), py::arg("token"), "Consume one token; return the next-token logits.")
        .def("set_profiling", &set_profiling, py::arg("on"),
             "Time the stages of every single-token step from now on (resets the totals).")
        .def("profile", &profile, "Total milliseconds per stage since set_profiling(True), and the number of steps.")
        .def("step_sample", &step_sample, py::arg("state"), py::arg("token"), py::arg("sampler"),
             "Consume one token and sample the next with `sampler` (logits stay in C++).")
        .def("prefill", &prefill, py::arg("state"), py::arg("tokens"), py::arg("logits") = true,
             py::arg("all_logits") = false, py::arg("snapshot_at") = std::vector<int>{}, py::arg("into") = py::none(),
             "Consume tokens with batched matrix products. Returns (logits or None, [states after "
             "snapshot_at[i] tokens]): new states, or the first len(snapshot_at) of `into` filled in place.")
        .def("step_batch", &step_batch, py::arg("states"), py::arg("tokens"),
             "One token for each of several states, batched: logits [n, vocab].")
        .def("set_lora", &set_lora, py::arg("layers"), py::arg("scale") = 1.0f,
             "Attach a LoRA adapter (bitmamba.cpp's): layers = [(A_in, B_in, A_out, B_out)] per weight layer "
             "(A [rank, in], B [out, rank]); every projection gets out += scale * B (A xn), xn its input after "
             "its RMSNorm. None detaches it. Changes the state signature (earlier states are refused).")
        .def_property("threads", &Model::threads, [](Model& md, int n) {
            py::gil_scoped_release nogil;
            md.set_threads(n);
        })
        .def_property(
            "kernel_level", [](const Model& md) { return std::string(md.kernels().name); },
            [](Model& md, const std::string& level) {
                std::lock_guard<std::mutex> lk(md.lock());
                md.set_kernels(&kernels_by_name(level));
            })
        .def_property_readonly("weight_bytes", &Model::weight_bytes)
        .def_property_readonly("state_bytes", [](const Model& md) { return md.state_layout().total_floats() * sizeof(float); })
        .def_property_readonly("vocab_size", [](const Model& md) { return md.info().vocab_size; })
        .def_property_readonly("info", &info);

    m.def("build_bitmamba2", &build_bitmamba2, py::arg("tensors"), py::arg("vocab_size"), py::arg("d_model"),
          py::arg("n_layers"), py::arg("n_heads"), py::arg("threads") = 0, py::arg("level") = "simd",
          py::arg("repeat_start") = 0, py::arg("repeat_end") = -1, py::arg("repeat_count") = 0,
          py::keep_alive<0, 1>(),
          "Build a BitMamba-2 model. Keeps `tensors` alive: the embedding stays a view of the mapped file. "
          "repeat_*: layers repeat_start..repeat_end run repeat_count extra times (RYS).");
    m.def("build_mamba1", &build_mamba1, py::arg("tensors"), py::arg("config"), py::arg("threads") = 0,
          py::arg("level") = "simd", py::keep_alive<0, 1>(),
          "Build a Mamba-1 model with BitLinear projections (bitmamba-student).");
}

}  // namespace bm::bindings
