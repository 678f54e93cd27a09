"""What the llama.cpp checks share: plain CPU buffers, and importances as llama_model_quantize
takes them. Imported by the scripts that run llama-cpp-python (which must be importable)."""

import ctypes

import llama_cpp.llama_cpp as llama_capi

_default_params = llama_capi.llama_model_default_params


def _plain_params():
    p = _default_params()
    p.use_extra_bufts = False
    return p


# Weights stay in llama.cpp's plain CPU buffers: no repacking into the AMX or interleaved kernels'
# layouts (extra buffer types), whose AMX path stops with SIGILL where the kernel does not grant
# the tile state (as in some virtual machines). The matrix products are the generic CPU ones.
llama_capi.llama_model_default_params = _plain_params


def imatrix_data(entries):
    """A null-terminated llama_model_imatrix_data array of (name bytes, contiguous float32 array)
    pairs; the caller keeps the arrays alive while llama.cpp reads them."""
    data = (llama_capi.llama_model_imatrix_data * (len(entries) + 1))()
    for i, (n, v) in enumerate(entries):
        data[i].name = n
        data[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        data[i].size = v.size
    data[len(entries)].name = None
    return data
