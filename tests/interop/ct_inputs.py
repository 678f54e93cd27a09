"""compressed-tensors' dynamic INT8 inputs at the scale qtool and vLLM use, for the checks that
compare qtool's W8A8 with compressed-tensors (check_export.py, check_llmcompressor.py).

compressed-tensors fake-quantises a W8A8 Linear's input per token with the scale
max|x| / 127.5 (its symmetric range is (127 - (-128)) / 2) and clamps to [-128, 127]; qtool, as
vLLM's dynamic INT8 kernels, divides by max|x| / 127. int8_inputs_at_127 makes a loaded model
quantise each such input with compressed-tensors' own fake_quantize (its rounding and clamp),
given the scale max|x| / 127: what is left between the two is the scale.
"""
import torch


def int8_inputs_at_127(model):
    """Each W8A8 Linear's input quantised by compressed-tensors' own fake_quantize (its rounding
    and clamp to [-128, 127]) with the per-token scale max|x| / 127 that qtool and vLLM's
    dynamic INT8 kernels use, in place of compressed-tensors' max|x| / 127.5 (its symmetric
    range is (127 - (-128)) / 2)."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    # The modules share their scheme objects: find them all before changing any.
    mods = [m for m in model.modules()
            if getattr(getattr(m, "quantization_scheme", None), "input_activations", None)]
    assert mods, "no Linear layer quantises its inputs"
    for m in mods:
        args = m.quantization_scheme.input_activations
        assert args.type == "int" and args.strategy == "token" and args.dynamic, args

        def hook(mod, inp, args=args):
            x = inp[0]
            scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).eps) / 127
            return (fake_quantize(x, scale, None, args),)
        m.register_forward_pre_hook(hook)
    for m in mods:
        m.quantization_scheme.input_activations = None  # replaced by the hooks
