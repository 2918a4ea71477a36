// Force-included before every C++ source (setup.py: -include), so that it is the first inclusion of the
// x86 intrinsic headers (torch's headers include them too, and the include guards would make a later
// inclusion a no-op).
//
// Why: GCC 12's intrinsic headers implement _mm512_undefined_ps() and its kin as a self-initialised
// variable (`__m512 __Y = __Y;`), the "don't care" source operand of many intrinsics (unpacks, shuffles,
// conversions). -Wall then reports `'__Y' is used uninitialized` / `may be used uninitialized` inside
// the header wherever such an intrinsic is inlined into our kernels: hundreds of warnings about code
// that is not ours and is correct (the operand is fully overwritten). The diagnostic state is attached
// to source locations, so ignoring these two warnings around the inclusion silences the header's lines
// only; the same warnings in our own code are still reported.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
