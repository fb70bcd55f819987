// The CPU's compiled kernels, float32 (loaded by `cpu_kernels.py`):
// - causal attention for a packed row of sequences;
// - RMSNorm and SiLU-and-multiply in one pass each, where PyTorch's decoder code makes four and two;
// - rotary position embedding of queries and keys in one pass, where PyTorch's code makes six per tensor.
//
// Attention. PyTorch's CPU flash attention computes a causal sequence shorter than 512 tokens as a full square (its key
// blocks are 512 long, and only whole blocks are skipped), and each sequence is one call. Here a task is one query
// block of one key/value head (the group's query heads folded into one matrix, so each key block serves all of
// them), and it reads exactly the keys its rows may see: about half the work on short sequences, one call per
// layer for the whole row, and tasks handed out longest first so both threads finish together. Its matrix products
// go through oneDNN's brgemm on chunks of keys copied once per call (1.15-1.2 x BLAS's sgemm at these sizes on the
// benchmark's AMD CPU, where MKL takes its AVX2 path).
//
// Queries (T, H, D) and keys / values (N, KV, D) may have any row and head strides; D must be contiguous.
// spans (S, 4): query row start, query count, first and past-last segment. segments (M, 2): key row start, length.
// A span's keys are its segments laid end to end; its query i sees keys [0, keys - queries + i] (lower right).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <utility>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

// Keys per chunk: keys and values are copied once per call into zero-padded chunks of this many, so every matrix
// product below has one of a few fixed shapes (oneDNN's brgemm compiles and caches a kernel per shape and thread).
constexpr int64_t kChunk = 64;
constexpr int64_t kColumns = 16;  // a chunk's product covers its keys rounded up to this
constexpr int64_t kRows = 8;      // and a block's query rows rounded up to this

int64_t round_up(int64_t n, int64_t step) { return (n + step - 1) / step * step; }

// C (m x n) = A (m x k) . B (k x n), row-major, through oneDNN's brgemm (PyTorch falls back to BLAS without it).
void product(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, bool accumulate, const float* a,
             const float* b, float* c) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, false);
}

struct Task {
  int64_t span, head, block, cost;
};

// The chunked keys of a call: per distinct segment, its keys in chunks of kChunk.
struct Chunks {
  std::vector<int64_t> first, count;  // per segment: its first chunk and how many it has
  std::vector<int64_t> start, keys;  // per chunk: its first key row and how many keys it holds
};

Chunks chunk_segments(const int64_t* segment, int64_t segment_count) {
  Chunks chunks;
  chunks.first.resize(segment_count);
  chunks.count.resize(segment_count);
  std::map<std::pair<int64_t, int64_t>, int64_t> seen;  // a shared context is listed once per sequence reading it
  for (int64_t g = 0; g < segment_count; ++g) {
    const int64_t start = segment[2 * g], length = segment[2 * g + 1];
    chunks.count[g] = (length + kChunk - 1) / kChunk;
    const auto found = seen.find({start, length});
    if (found != seen.end()) {
      chunks.first[g] = found->second;
      continue;
    }
    chunks.first[g] = static_cast<int64_t>(chunks.start.size());
    seen[{start, length}] = chunks.first[g];
    for (int64_t c = 0; c < length; c += kChunk) {
      chunks.start.push_back(start + c);
      chunks.keys.push_back(std::min(kChunk, length - c));
    }
  }
  return chunks;
}

// Softmax over one folded row laid out in chunks (chunk t holds columns [column[t], column[t] + keys[t])), for the
// columns before `limit`, in place, zeros elsewhere in each chunk; returns 1 / the sum of the exponentials. Ragged
// ends go through masked vectors: scalar exponentials there cost as much as the rest of a short row.
float softmax_row(float* row, int64_t row_step, const int64_t* column, const int64_t* keys, int64_t chunk_count,
                  int64_t limit) {
  constexpr int64_t lanes = Vec::size();
  const Vec lowest(-std::numeric_limits<float>::infinity());
  Vec vmax = lowest;
  for (int64_t t = 0; t < chunk_count; ++t) {
    const int64_t seen = std::clamp<int64_t>(limit - column[t], 0, keys[t]);
    const float* p = row + t * row_step;
    int64_t j = 0;
    for (; j + lanes <= seen; j += lanes) vmax = at::vec::maximum(vmax, Vec::loadu(p + j));
    if (j < seen) vmax = at::vec::maximum(vmax, Vec::set(lowest, Vec::loadu(p + j, seen - j), seen - j));
  }
  float spill[lanes];
  vmax.store(spill);
  const Vec shift(*std::max_element(spill, spill + lanes));
  Vec vsum(0.f);
  for (int64_t t = 0; t < chunk_count; ++t) {
    const int64_t seen = std::clamp<int64_t>(limit - column[t], 0, keys[t]);
    float* p = row + t * row_step;
    int64_t j = 0;
    for (; j + lanes <= seen; j += lanes) {
      const Vec e = (Vec::loadu(p + j) - shift).exp_u20();
      e.store(p + j);
      vsum = vsum + e;
    }
    if (j < seen) {
      const Vec e = Vec::set(Vec(0.f), (Vec::loadu(p + j, seen - j) - shift).exp_u20(), seen - j);
      e.store(p + j, seen - j);
      vsum = vsum + e;
    }
    std::memset(p + seen, 0, (kChunk - seen) * sizeof(float));
  }
  vsum.store(spill);
  float sum = 0.f;
  for (int64_t l = 0; l < lanes; ++l) sum += spill[l];
  return 1.f / sum;
}

}  // namespace

void packed_causal_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& spans, const at::Tensor& segments, at::Tensor& out, double scale,
                             int64_t block) {
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
                  value.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "packed_causal_attention takes float32 tensors");
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && value.dim() == 3 && out.dim() == 3, "tensors must be 3-D");
  TORCH_CHECK(query.stride(2) == 1 && key.stride(2) == 1 && value.stride(2) == 1 && out.stride(2) == 1,
              "the head dimension must be contiguous");
  TORCH_CHECK(out.sizes() == query.sizes(), "out must have the queries' shape");
  TORCH_CHECK(key.sizes() == value.sizes(), "keys and values must have one shape");
  const int64_t heads = query.size(1), dim = query.size(2), kv_heads = key.size(1);
  TORCH_CHECK(key.size(2) == dim && kv_heads > 0 && heads % kv_heads == 0, "head counts or sizes do not match");
  TORCH_CHECK(spans.scalar_type() == at::kLong && spans.dim() == 2 && spans.size(1) == 4 && spans.is_contiguous(),
              "spans must be a contiguous (S, 4) int64 tensor");
  TORCH_CHECK(segments.scalar_type() == at::kLong && segments.dim() == 2 && segments.size(1) == 2 &&
                  segments.is_contiguous(),
              "segments must be a contiguous (M, 2) int64 tensor");
  TORCH_CHECK(block > 0, "block must be positive");
  const int64_t group = heads / kv_heads;
  const int64_t* span = spans.data_ptr<int64_t>();
  const int64_t* segment = segments.data_ptr<int64_t>();
  const int64_t span_count = spans.size(0), segment_count = segments.size(0);

  std::vector<int64_t> key_counts(span_count, 0);
  std::vector<Task> tasks;
  for (int64_t g = 0; g < segment_count; ++g)
    TORCH_CHECK(segment[2 * g] >= 0 && segment[2 * g + 1] > 0 && segment[2 * g] + segment[2 * g + 1] <= key.size(0),
                "a segment is out of range");
  const Chunks chunks = chunk_segments(segment, segment_count);
  int64_t most_chunks = 1;  // chunks one span reads
  for (int64_t s = 0; s < span_count; ++s) {
    const int64_t q0 = span[4 * s], queries = span[4 * s + 1], first = span[4 * s + 2], past = span[4 * s + 3];
    TORCH_CHECK(queries > 0 && q0 >= 0 && q0 + queries <= query.size(0), "a span's queries are out of range");
    TORCH_CHECK(0 <= first && first < past && past <= segment_count, "a span's segments are out of range");
    int64_t span_chunks = 0;
    for (int64_t g = first; g < past; ++g) {
      key_counts[s] += segment[2 * g + 1];
      span_chunks += chunks.count[g];
    }
    TORCH_CHECK(key_counts[s] >= queries, "a span has fewer keys than queries");
    most_chunks = std::max(most_chunks, span_chunks);
    for (int64_t b = 0; b < queries; b += block) {
      const int64_t seen = key_counts[s] - queries + std::min(queries, b + block);
      for (int64_t h = 0; h < kv_heads; ++h) tasks.push_back({s, h, b, seen * std::min(block, queries - b)});
    }
  }
  // longest first, handed out one at a time: the threads finish together
  std::sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });

  const float* q_data = query.data_ptr<float>();
  const float* k_data = key.data_ptr<float>();
  const float* v_data = value.data_ptr<float>();
  float* o_data = out.data_ptr<float>();
  const int64_t q_row = query.stride(0), q_head = query.stride(1);
  const int64_t k_row = key.stride(0), k_head = key.stride(1);
  const int64_t v_row = value.stride(0), v_head = value.stride(1);
  const int64_t o_row = out.stride(0), o_head = out.stride(1);
  const float alpha = static_cast<float>(scale);

  // Keys transposed (dim x kChunk) and values (kChunk x dim), per chunk and key/value head, zero-padded.
  const int64_t chunk_count = static_cast<int64_t>(chunks.start.size()), tile = dim * kChunk;
  at::Tensor keys_t = at::empty({chunk_count * kv_heads * tile}, query.options());
  at::Tensor values_c = at::empty({chunk_count * kv_heads * tile}, query.options());
  float* kt_data = keys_t.data_ptr<float>();
  float* vc_data = values_c.data_ptr<float>();
  at::parallel_for(0, chunk_count * kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = i / kv_heads, h = i % kv_heads, keys = chunks.keys[c];
      float* kt = kt_data + i * tile;
      float* vc = vc_data + i * tile;
      for (int64_t j = 0; j < keys; ++j) {
        const float* k_src = k_data + (chunks.start[c] + j) * k_row + h * k_head;
        for (int64_t d = 0; d < dim; ++d) kt[d * kChunk + j] = k_src[d];
        std::memcpy(vc + j * dim, v_data + (chunks.start[c] + j) * v_row + h * v_head, dim * sizeof(float));
      }
      if (keys < kChunk) {
        for (int64_t d = 0; d < dim; ++d) std::memset(kt + d * kChunk + keys, 0, (kChunk - keys) * sizeof(float));
        std::memset(vc + keys * dim, 0, (kChunk - keys) * dim * sizeof(float));
      }
    }
  });

  const int64_t task_count = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    const int64_t folded_max = group * round_up(block, kRows);
    std::vector<float> packed(folded_max * dim), scores(most_chunks * folded_max * kChunk),
        result(folded_max * dim), inverse(folded_max);
    std::vector<int64_t> chunk(most_chunks), column(most_chunks), keys(most_chunks);  // per chunk the task reads
    for (int64_t t = next++; t < task_count; t = next++) {
      const Task& task = tasks[t];
      const int64_t* sp = span + 4 * task.span;
      const int64_t q0 = sp[0], queries = sp[1], first = sp[2], past = sp[3];
      const int64_t rows = std::min(block, queries - task.block), padded = round_up(rows, kRows);
      const int64_t before = key_counts[task.span] - queries;  // keys every query of the span sees
      const int64_t width = before + task.block + rows;         // keys some row of this block sees
      const int64_t folded = group * padded;
      // the group's queries, scaled, one matrix: row (head in group * padded + i); padding rows are zeros
      std::fill(packed.begin(), packed.begin() + folded * dim, 0.f);
      const Vec factor(alpha);
      for (int64_t hg = 0; hg < group; ++hg)
        for (int64_t i = 0; i < rows; ++i) {
          const float* from = q_data + (q0 + task.block + i) * q_row + (task.head * group + hg) * q_head;
          float* to = &packed[(hg * padded + i) * dim];
          int64_t d = 0;
          for (; d + Vec::size() <= dim; d += Vec::size()) (Vec::loadu(from + d) * factor).store(to + d);
          for (; d < dim; ++d) to[d] = from[d] * alpha;
        }
      // scores, chunk by chunk: (folded x kChunk) blocks of queries . keys^T
      int64_t used = 0, seen = 0;
      for (int64_t g = first; g < past && seen < width; ++g)
        for (int64_t c = chunks.first[g]; c < chunks.first[g] + chunks.count[g] && seen < width; ++c) {
          chunk[used] = c;
          column[used] = seen;
          keys[used] = std::min(chunks.keys[c], width - seen);
          product(folded, round_up(keys[used], kColumns), dim, dim, kChunk, kChunk, false, packed.data(),
                  kt_data + (c * kv_heads + task.head) * tile, &scores[used * folded * kChunk]);
          seen += keys[used];
          ++used;
        }
      for (int64_t r = 0; r < folded; ++r) {
        const int64_t i = r % padded;
        const int64_t limit = i < rows ? before + task.block + i + 1 : width;
        inverse[r] = softmax_row(&scores[r * kChunk], folded * kChunk, column.data(), keys.data(), used, limit);
      }
      // result (folded x dim) = probabilities . values, chunk by chunk
      for (int64_t u = 0; u < used; ++u)
        product(folded, dim, round_up(keys[u], kColumns), kChunk, dim, dim, u > 0, &scores[u * folded * kChunk],
                vc_data + (chunk[u] * kv_heads + task.head) * tile, result.data());
      for (int64_t hg = 0; hg < group; ++hg)
        for (int64_t i = 0; i < rows; ++i) {
          const float scale_row = inverse[hg * padded + i];
          const Vec row_factor(scale_row);
          const float* from = &result[(hg * padded + i) * dim];
          float* to = o_data + (q0 + task.block + i) * o_row + (task.head * group + hg) * o_head;
          int64_t d = 0;
          for (; d + Vec::size() <= dim; d += Vec::size()) (Vec::loadu(from + d) * row_factor).store(to + d);
          for (; d < dim; ++d) to[d] = from[d] * scale_row;
        }
    }
  });
}

// RMSNorm over the last dimension as the decoders write it in float32: x * (1 / sqrt(mean(x^2) + eps)), then
// times the weight. x must be contiguous.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "rms_norm takes float32 tensors");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "rms_norm takes contiguous tensors");
  const int64_t width = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == width, "the weight must match the last dimension");
  at::Tensor out = at::empty_like(x);
  const int64_t rows = width ? x.numel() / width : 0;
  const float* in = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    constexpr int64_t lanes = Vec::size();
    float spill[lanes];
    for (int64_t r = begin; r < end; ++r) {
      const float* row = in + r * width;
      float* dst = o + r * width;
      Vec squares(0.f);
      int64_t j = 0;
      for (; j + lanes <= width; j += lanes) {
        const Vec v = Vec::loadu(row + j);
        squares = at::vec::fmadd(v, v, squares);
      }
      squares.store(spill);
      float sum = 0.f;
      for (int64_t l = 0; l < lanes; ++l) sum += spill[l];
      for (; j < width; ++j) sum += row[j] * row[j];
      const float inverse = 1.f / std::sqrt(sum / static_cast<float>(width) + static_cast<float>(eps));
      const Vec scale(inverse);
      for (j = 0; j + lanes <= width; j += lanes)
        ((Vec::loadu(row + j) * scale) * Vec::loadu(w + j)).store(dst + j);
      for (; j < width; ++j) dst[j] = (row[j] * inverse) * w[j];
    }
  });
  return out;
}

// silu(gate) * up, with SiLU as PyTorch computes it on the CPU: x / (1 + exp(-x)). Both contiguous, one shape.
at::Tensor silu_and_mul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(gate.scalar_type() == at::kFloat && up.scalar_type() == at::kFloat, "silu_and_mul takes float32");
  TORCH_CHECK(gate.is_contiguous() && up.is_contiguous() && gate.sizes() == up.sizes(),
              "silu_and_mul takes two contiguous tensors of one shape");
  at::Tensor out = at::empty_like(gate);
  const float* g = gate.data_ptr<float>();
  const float* u = up.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, gate.numel(), 16384, [&](int64_t begin, int64_t end) {
    const Vec one(1.f);
    int64_t j = begin;
    for (; j + Vec::size() <= end; j += Vec::size()) {
      const Vec x = Vec::loadu(g + j);
      ((x / (one + x.neg().exp())) * Vec::loadu(u + j)).store(o + j);
    }
    for (; j < end; ++j) o[j] = (g[j] / (1.f + std::exp(-g[j]))) * u[j];
  });
  return out;
}

// Rotary embedding as transformers writes it, x * cos + rotate_half(x) * sin, where rotate_half(x) is
// (-x[D/2:], x[:D/2]). x is (T, H, D) with any row and head strides (D contiguous); cos and sin are contiguous (T, D),
// the same for every head. Returns a contiguous (T, H, D) tensor.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
              "rotary takes float32 tensors");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "x must be (T, H, D) with D contiguous");
  const int64_t rows = x.size(0), heads = x.size(1), dim = x.size(2), half = dim / 2;
  TORCH_CHECK(dim % 2 == 0, "the head size must be even");
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == rows && cos.size(1) == dim && cos.is_contiguous() &&
                  sin.sizes() == cos.sizes() && sin.is_contiguous(),
              "cos and sin must be contiguous (T, D)");
  at::Tensor out = at::empty({rows, heads, dim}, x.options());
  const float* in = x.data_ptr<float>();
  const float* c = cos.data_ptr<float>();
  const float* s = sin.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t row_stride = x.stride(0), head_stride = x.stride(1);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    constexpr int64_t lanes = Vec::size();
    for (int64_t t = begin; t < end; ++t) {
      const float* ct = c + t * dim;
      const float* st = s + t * dim;
      for (int64_t h = 0; h < heads; ++h) {
        const float* src = in + t * row_stride + h * head_stride;
        float* dst = o + (t * heads + h) * dim;
        int64_t i = 0;
        if (half % lanes == 0) {
          for (; i < half; i += lanes) {
            const Vec low = Vec::loadu(src + i), high = Vec::loadu(src + half + i);
            (low * Vec::loadu(ct + i) - high * Vec::loadu(st + i)).store(dst + i);
            (high * Vec::loadu(ct + half + i) + low * Vec::loadu(st + half + i)).store(dst + half + i);
          }
        }
        for (; i < half; ++i) {
          const float low = src[i], high = src[half + i];
          dst[i] = low * ct[i] - high * st[i];
          dst[half + i] = high * ct[half + i] + low * st[half + i];
        }
      }
    }
  });
  return out;
}

TORCH_LIBRARY(embedding_api_cpu, m) {
  m.def(
      "packed_causal_attention(Tensor query, Tensor key, Tensor value, Tensor spans, Tensor segments, "
      "Tensor(a!) out, float scale, int block) -> ()");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_and_mul(Tensor gate, Tensor up) -> Tensor");
  m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
}

TORCH_LIBRARY_IMPL(embedding_api_cpu, CPU, m) {
  m.impl("packed_causal_attention", packed_causal_attention);
  m.impl("rms_norm", rms_norm);
  m.impl("silu_and_mul", silu_and_mul);
  m.impl("rotary", rotary);
}
