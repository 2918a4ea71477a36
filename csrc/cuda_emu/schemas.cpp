// The op schemas of the emulation library: csrc/ops.cpp's, in the namespace erbnn_emu, so that the
// emulated CUDA kernels (csrc/cuda/*.cu, registered for CPU tensors under ERBNN_CUDA_EMU) sit beside the
// real ones without a second copy of the schemas. Ops without an emulated kernel (the CPU-only ones)
// have a schema here and no kernel.
#define erbnn erbnn_emu
#include "ops.cpp"
