// The full-reduction ("dense") packing of a binary conv with few channels (C <= one word): an output
// position's kh*kw*C sign bits contiguous, tap t at bits [t*C, (t+1)*C), so the reduction takes
// ceil(taps * C / bits) words instead of one mostly-empty word per tap. Out-of-frame taps contribute 0
// bits, as in the per-tap layout, so the epilogue's popc(w_tap) border correction is unchanged.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace erbnn {

// Word w of the dense layout; tap(t) returns tap t's word (C bits, tail bits 0).
template <typename Word, typename Tap>
ERBNN_HD Word dense_word(int64_t C, int64_t taps, int64_t w, const Tap& tap) {
  constexpr int64_t bits = int64_t(sizeof(Word)) * 8;
  Word acc = 0;
  const int64_t b0 = w * bits, end = taps * C, b1 = b0 + bits < end ? b0 + bits : end;
  for (int64_t t = b0 / C; t * C < b1; ++t) {
    const int64_t off = t * C - b0;
    const Word v = tap(t);
    acc |= off >= 0 ? Word(v << off) : Word(v >> -off);
  }
  return acc;
}

// Dense words per output, 0 where the layout saves nothing (C over one word, or a 1x1 kernel).
ERBNN_HD int64_t dense_word_count(int64_t C, int64_t Cw, int64_t taps, int64_t bits) {
  const int64_t kd = (taps * C + bits - 1) / bits;
  return Cw == 1 && kd < taps ? kd : 0;
}

}  // namespace erbnn
