// The op registry: every torch.ops.erbnn schema lives here (one TORCH_LIBRARY block); CPU and CUDA
// kernels register themselves with TORCH_LIBRARY_IMPL in csrc/cpu/*.cpp and csrc/cuda/*.cu.
// Fake (meta) implementations are registered in erbnn_ext/ops.py, autograd in erbnn_ext/functional.py.
// The process-wide knobs (CPU path, conv engine) are ops too, in runtime_ops.cpp; module.cpp is the
// empty Python module.
#include <torch/library.h>

TORCH_LIBRARY(erbnn, m) {
  // ---- restoration (method.md sections 1-3) ----
  // w: [O, ...]; w_b same shape/dtype in {-1,+1}; mean, alpha: [O] (float32, float64 for float64 w).
  m.def("restore_weight(Tensor w) -> (Tensor w_b, Tensor mean, Tensor alpha)");
  // b: 0-dim tensor, the surrogate width.
  m.def("_restore_weight_backward(Tensor grad_wb, Tensor w, Tensor mean, Tensor alpha, Tensor b) -> Tensor");
  // x: [N, ...]; y = sigma * sign((x - mean) / sigma) + mean; mean, sigma 0-dim; sample_rms [N].
  m.def("restore_activation(Tensor x) -> (Tensor y, Tensor mean, Tensor sigma, Tensor sample_rms)");
  m.def("_restore_activation_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor sigma, "
        "Tensor sample_rms, Tensor b) -> Tensor");
  // The same for x [N, C, P] (P = H*W) with grad_y given as its NHWC rows [N, P, C] (the ER step's order).
  m.def("_restore_activation_backward_nhwc(Tensor grad_y, Tensor x, Tensor mean, Tensor sigma, "
        "Tensor sample_rms, Tensor b) -> Tensor");
  // Fixed statistics (eval, or given by the caller): mean, sigma 0-dim.
  m.def("restore_activation_fixed(Tensor x, Tensor mean, Tensor sigma) -> Tensor");
  m.def("_restore_activation_fixed_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor sigma, "
        "Tensor b) -> Tensor");
  // Training step of one layer side: the restoration above, q = two_sided_quantile of the standardised
  // values (w - mean_o) / max(alpha_o, 1e-12) resp. (x - mean) / max(sigma, 1e-12) at p (0-dim, read on
  // its device), q pushed into the float64 ring q_values at q_count % R, width = max(mean of the filled
  // ring, min_width); activations also push mean and sigma. b_step: 0-dim, the new width in the
  // statistics dtype. An empty input changes no state (b_step = width).
  m.def("restore_weight_train(Tensor w, Tensor p, Tensor(a!) q_values, Tensor(b!) q_count, Tensor(c!) width, "
        "float min_width) -> (Tensor w_b, Tensor mean, Tensor alpha, Tensor b_step)");
  m.def("restore_activation_train(Tensor x, Tensor p, Tensor(a!) q_values, Tensor(b!) q_count, Tensor(c!) width, "
        "Tensor(d!) mean_values, Tensor(e!) mean_count, Tensor(f!) sigma_values, Tensor(g!) sigma_count, "
        "float min_width) -> (Tensor y, Tensor mean, Tensor sigma, Tensor sample_rms, Tensor b_step)");
  // The same for x [N, C, P] with y written as its NHWC rows [N, P, C] (the ER step's conv backward runs
  // on channels_last tensors), the same values and state, and y_bits = pack_signs(y - mean, dim=2)
  // [N, P, ceil(C / 64)] (int64 words, the popcount conv's packed input).
  m.def("restore_activation_train_nhwc(Tensor x, Tensor p, Tensor(a!) q_values, Tensor(b!) q_count, "
        "Tensor(c!) width, Tensor(d!) mean_values, Tensor(e!) mean_count, Tensor(f!) sigma_values, "
        "Tensor(g!) sigma_count, float min_width) -> (Tensor y, Tensor mean, Tensor sigma, Tensor sample_rms, "
        "Tensor b_step, Tensor y_bits)");
  // restore_activation_train_nhwc without y: the same statistics, state and y_bits (the lean ER step keeps
  // y's signs, not y).
  m.def("restore_activation_train_bits(Tensor x, Tensor p, Tensor(a!) q_values, Tensor(b!) q_count, "
        "Tensor(c!) width, Tensor(d!) mean_values, Tensor(e!) mean_count, Tensor(f!) sigma_values, "
        "Tensor(g!) sigma_count, float min_width) -> (Tensor mean, Tensor sigma, Tensor sample_rms, Tensor b_step, "
        "Tensor y_bits)");
  // Forward sign(x) (+1 for x >= 0); backward g * (max(b,1)/b) * (1 - tanh(x/b)^2).
  m.def("approx_sign(Tensor x) -> Tensor");
  m.def("_approx_sign_backward(Tensor grad, Tensor x, Tensor b) -> Tensor");
  // x [B, R, S] -> x.transpose(1, 2).contiguous() [B, S, R]: an ER layer's training step moves its
  // activations between NCHW and NHWC with it (CPU kernel; other devices run the reference).
  m.def("_batch_transpose(Tensor x) -> Tensor");
  // A restored tensor back from its packed signs (the lean training step's backward): bits uint8 [N, P, B]
  // (bit j of byte k = channel 8k + j; B >= ceil(channels / 8)); out = mean + sigma where the bit is set,
  // else mean - sigma (the restoration's float sums, in mean's dtype: float32 or float64), as NHWC rows
  // [N, P, channels], or [N, channels, P] with channels_first; dtype: the out dtype (default mean's), the two
  // values rounded once to it (an autocast step's bfloat16 y).
  m.def("_unpack_restored(Tensor bits, int channels, Tensor mean, Tensor sigma, bool channels_first, "
        "ScalarType? dtype=None) -> Tensor");

  // ---- adaptive percentile (method.md section 3) ----
  // max(Q_p(|x[x<=0]|), Q_p(x[x>=0])), linear interpolation, exact, by selection. 0-dim float32.
  m.def("two_sided_quantile(Tensor x, float p) -> Tensor");

  // ---- bit packing and XNOR-popcount ops (kernels.md) ----
  m.def("pack_signs(Tensor x, int dim) -> Tensor");
  m.def("unpack_signs(Tensor packed, int n, int dim) -> Tensor");
  // == F.conv2d(sign(x), sign(w), stride, padding, dilation) with zero padding; float32 out.
  m.def("binary_conv2d(Tensor x, Tensor w, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // == sign(x) @ sign(w).T; float32 out.
  m.def("binary_linear(Tensor x, Tensor w) -> Tensor");
  // Deploy path. Weights packed once: w [O, C, kh, kw] -> sign words [O, kh, kw, Cw] along C, int64
  // (Cw = ceil(C/64)) on CPU, int32 (Cw = ceil(C/32)) on CUDA; bit j of word k = channel k*W + j.
  m.def("pack_conv_weight(Tensor w) -> Tensor");
  // Fused conv on packed weights; W_b = the +-1 weights. With b = sign(x - x_shift) (+1 where x >= x_shift):
  //   out[n,o] = out_scale[o] * conv(b, W_b) + out_bias[o] + ones_scale[o] * conv(1, W_b)   (zero padding);
  // x_shift: None (0) or a 1-element float tensor on x's device (read there: no host sync on CUDA);
  // out_scale / out_bias / ones_scale: [O] or 1 element (broadcast); None = 1 / 0 / 0. Then the fused
  // block tail (deploy): + residual [N, O, OH, OW], then RPReLU with act = [3, O] (shift_in, slope,
  // shift_out): y = PReLU(v + act[0]; act[1]) + act[2]. Always float32 out, whatever x's dtype (callers cast).
  m.def("binary_conv2d_packed(Tensor x, Tensor w_packed, int[2] stride, int[2] padding, int[2] dilation, "
        "Tensor? x_shift=None, Tensor? out_scale=None, Tensor? out_bias=None, Tensor? ones_scale=None, "
        "Tensor? residual=None, Tensor? act=None) -> Tensor");
  // Chained deploy convs: binary_conv2d_packed, where x may be given as its packed signs
  // [N, H, W, Cw] (words as pack_conv_weight's; sign(x - shift) already applied, so x_shift = None) of
  // in_channels channels (-1: x is float), and the epilogue can also write the next binary layer's input:
  // out_bits = the packed signs of (out - next_shift) [N, OH, OW, ceil(O / W)] (None: empty [0]);
  // float_out=False skips the float output (empty [0]).
  m.def("binary_conv2d_bits(Tensor x, Tensor w_packed, int[2] stride, int[2] padding, int[2] dilation, "
        "int in_channels=-1, Tensor? x_shift=None, Tensor? out_scale=None, Tensor? out_bias=None, "
        "Tensor? ones_scale=None, Tensor? residual=None, Tensor? act=None, Tensor? next_shift=None, "
        "bool float_out=True) -> (Tensor out, Tensor out_bits)");
}
