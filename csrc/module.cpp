// The Python module erbnn_ext._C: empty. Importing it loads this library, whose static initialisers
// register torch.ops.erbnn.* with the dispatcher; Python talks to the library only through those ops.
// Only the stable CPython ABI is used (Py_LIMITED_API, set by setup.py), so one build serves every
// CPython >= 3.10 (Py_LIMITED_API=0x030A0000, the floor torch sets).
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "erbnn_ext native kernels (registered as torch.ops.erbnn.*)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
