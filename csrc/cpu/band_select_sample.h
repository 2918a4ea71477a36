// BandSelect's two constructors that bracket the bands from a sample of the values (out of band_select.h's
// class body): by partial sorts of the sample (the plain op), or through a histogram of its keys (the
// training activation op, FromHistogram). Included at the end of band_select.h only.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace erbnn {

template <typename scalar_t>
BandSelect<scalar_t>::BandSelect(double p, int64_t n, const scalar_t* sample, int64_t m) : p_(p) {
  std::vector<Key> half[2];
  for (int64_t i = 0; i < m; ++i) {
    const Key r = QK::raw(sample[i]), mag = r & kMag;
    half[r >> kBits].push_back(mag);
    if (mag == 0) half[1 - (r >> kBits)].push_back(mag);  // a zero is in both halves
  }
  for (int h = 0; h < 2; ++h) {
    auto& s = half[h];
    lo_[h] = 0, hi_[h] = kMag;  // no sample of the half: take all of it
    if (s.empty()) continue;
    const int64_t ms = int64_t(s.size());
    const double j = p * double(ms - 1);
    // about 5 sigma of the rank's binomial spread (more than 4 for the runs' correlation)
    const int64_t d = int64_t(5.0 * std::sqrt(double(ms) * p * (1.0 - p))) + 16;
    const int64_t a = int64_t(std::floor(j)) - d, b = int64_t(std::ceil(j)) + 1 + d;
    if (a >= 0) {
      std::nth_element(s.begin(), s.begin() + a, s.end());
      lo_[h] = s[a];
    }
    if (b < ms) {
      std::nth_element(s.begin() + std::max<int64_t>(a + 1, 0), s.begin() + b, s.end());
      hi_[h] = s[b];
    }
  }
  alloc(n);
}

template <typename scalar_t>
BandSelect<scalar_t>::BandSelect(double p, int64_t n, const scalar_t* sample, int64_t m, FromHistogram) : p_(p) {
  constexpr int kShift = std::numeric_limits<scalar_t>::digits - 1 - kSubBits;
  const Key top = max_magnitude(sample, m);
  const Key base = std::max<Key>(top >> kShift, kHistBins - 1) - (kHistBins - 1);
  std::vector<uint32_t> hist(2 * kHistBins, 0);
  int64_t zeros[2] = {0, 0}, neg = 0;  // zeros per sign, negatives
  for (int64_t i = 0; i < m; ++i) {
    const Key r = QK::raw(sample[i]), mag = r & kMag, b = mag >> kShift;
    const int h = int(r >> kBits);
    ++hist[h * kHistBins + (b > base ? size_t(b - base) : 0)];
    zeros[h] += mag == 0;
    neg += h;
  }
  hist[0] += uint32_t(zeros[1]), hist[kHistBins] += uint32_t(zeros[0]);  // a zero is in both halves
  const int64_t ms_half[2] = {m - neg + zeros[1], neg + zeros[0]};
  const auto floor_of = [&](int64_t bin) { return bin == 0 ? Key(0) : Key((base + Key(bin)) << kShift); };
  const auto ceil_of = [&](int64_t bin) { return Key(((base + Key(bin) + 1) << kShift) - 1); };
  for (int h = 0; h < 2; ++h) {
    const uint32_t* hh = hist.data() + h * kHistBins;
    const int64_t ms = ms_half[h];
    lo_[h] = 0, hi_[h] = kMag;  // no sample of the half: take all of it
    if (ms == 0) continue;
    const double j = p * double(ms - 1);
    const int64_t d = int64_t(5.0 * std::sqrt(double(ms) * p * (1.0 - p))) + 16;
    const int64_t a = int64_t(std::floor(j)) - d, b = int64_t(std::ceil(j)) + 1 + d;
    lo_[h] = 1;
    int64_t cum = 0, bin = 0;
    if (a >= 0) {
      while (cum + hh[bin] <= a) cum += hh[bin++];
      lo_[h] = std::max<Key>(floor_of(bin), 1);
    }
    for (int64_t c = cum, i = bin; i < kHistBins; c += hh[i++])  // the bucket of rank j: the estimate
      if (c + hh[i] > int64_t(j)) {
        est_[h] = floor_of(i);
        break;
      }
    if (b < ms) {
      while (cum + hh[bin] <= b) cum += hh[bin++];
      hi_[h] = std::min(ceil_of(bin), kMag);
    }
  }
  share_band();
  lean_ = true;
  // The buffer: the sample's share in the bands' buckets (a zero counted twice), with 6 sigma and some
  // slack (an overflow falls back).
  const auto bin_of = [&](Key k) { return std::min<int64_t>(k >> kShift > base ? int64_t((k >> kShift) - base) : 0, kHistBins - 1); };
  int64_t in = 0;
  for (int h = 0; h < 2; ++h)
    for (int64_t i = bin_of(lo_[h]); i <= bin_of(hi_[h]); ++i) in += hist[h * kHistBins + i];
  const double frac = (double(in) + 6.0 * std::sqrt(double(in)) + 16.0) / double(m);
  alloc_keys(std::min<int64_t>(n, int64_t(frac * double(n)) + 1024));
}

}  // namespace erbnn
